"""Statistics shared by the sweep's seed policy and the report (numpy; scipy imported where used)."""
