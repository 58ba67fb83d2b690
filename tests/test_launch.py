"""The launcher layer without a cluster: the `launch:` block, the sbatch script submitit
writes from it, the commands of each node of a multi-node cell, `sweep plan`'s summary,
and the `--launcher` override. (Jobs on a real cluster: tests/test_slurm.py.)"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bicc_lab.spec import SpecError, load_sweep
from bicc_lab.spec.sweep_sections import LaunchConfig


def _sweep(tmp_path: Path, launch: str, extra: str = ""):
    (tmp_path / "base.yaml").write_text("name: b\nmodel: {name: tiny}\n" + extra)
    (tmp_path / "s.yaml").write_text(
        textwrap.dedent(
            f"""
            name: s
            base: base.yaml
            grid: {{seed: [0, 1, 2]}}
            {launch}
            """
        ).lstrip()
    )
    return tmp_path / "s.yaml"


def test_launch_block_defaults_to_local_and_validates(tmp_path):
    sweep = load_sweep(_sweep(tmp_path, ""))
    assert sweep.spec.launch.kind == "local" and sweep.spec.launch.nodes == 1
    with pytest.raises(SpecError) as err:
        load_sweep(_sweep(tmp_path, "launch: {kind: local, partition: gpu}"))
    assert "launch.partition applies to kind slurm, not local" in str(err.value)
    assert "s.yaml:" in str(err.value)
    with pytest.raises(SpecError) as err:
        load_sweep(_sweep(tmp_path, "launch: {kind: pbs}"))
    assert "launch.kind" in str(err.value)
    sweep = load_sweep(_sweep(tmp_path, ""), ["launch.kind=slurm", "launch.gpus_per_node=8"])
    assert (sweep.spec.launch.kind, sweep.spec.launch.gpus_per_node) == ("slurm", 8)


def test_sbatch_script_carries_every_resource(tmp_path):
    pytest.importorskip("submitit")
    from submitit.slurm.slurm import _make_sbatch_string

    from bicc_lab.launch.slurm import sbatch_parameters

    launch = LaunchConfig(
        kind="slurm", partition="gpu", nodes=2, gpus_per_node=4, cpus_per_task=16, mem_gb=64,
        time_min=240, account="lab", qos="high", constraint="a100", setup=["module load cuda/12"],
        extra={"exclusive": True, "reservation": "paper"},
    )
    params = sbatch_parameters(launch, "paper-grid")
    script = _make_sbatch_string(command="python -u -m submitit.core._submit", folder=tmp_path, **params)
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=65536M",
        "#SBATCH --time=240",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=a100",
        "#SBATCH --exclusive",
        "#SBATCH --reservation=paper",
        "#SBATCH --job-name=paper-grid",
        "#SBATCH --signal=USR2@120",  # 240 min / 20, capped at 2 min: time to requeue cleanly
        "module load cuda/12",
    ):
        assert line in script.splitlines(), (line, script)


def test_single_node_runs_the_worker_itself():
    from bicc_lab.launch.slurm import node_command

    argv, env = node_command(
        Path("/runs/s/c"), nodes=1, gpus_per_node=1, node_rank=0, hostnames=["n1"], job_id="77",
        python="py",
    )
    assert argv == ["py", "-m", "bicc_lab.launch.worker", "/runs/s/c"] and env == {}


def test_one_node_with_four_gpus_is_one_accelerate_launch():
    from bicc_lab.launch.slurm import node_command

    argv, _ = node_command(
        Path("/c"), nodes=1, gpus_per_node=4, node_rank=0, hostnames=["n1"], job_id="1234",
        python="py",
    )
    assert " ".join(argv) == (
        "py -m accelerate.commands.launch --num_machines 1 --machine_rank 0 --num_processes 4 "
        "--main_process_ip n1 --main_process_port 29734 --multi_gpu --same_network "
        "-m bicc_lab.launch.worker /c"
    )


def test_multi_node_cell_with_a_vllm_server_node():
    """3 nodes x 8 GPUs, train.vllm_mode server: nodes 0-1 train (16 processes, rendezvous
    on node 0), node 2 serves vLLM; the trainers are told where it is."""
    from bicc_lab.launch.slurm import node_command

    hosts = ["gpu-a", "gpu-b", "gpu-c"]
    commands = [
        node_command(
            Path("/c"), nodes=3, gpus_per_node=8, node_rank=rank, hostnames=hosts, job_id="5001_3",
            vllm_server=True, model="Qwen/Qwen3-4B", python="py",
        )
        for rank in range(3)
    ]
    for rank in (0, 1):
        argv, env = commands[rank]
        assert " ".join(argv) == (
            f"py -m accelerate.commands.launch --num_machines 2 --machine_rank {rank} --num_processes 16 "
            "--main_process_ip gpu-a --main_process_port 29501 --multi_gpu --same_network "
            "-m bicc_lab.launch.worker /c"
        )
        assert env == {"BICC_LAB_VLLM_SERVER_HOST": "gpu-c"}
    argv, _ = commands[2]
    assert " ".join(argv) == (
        "py -m trl.cli.main vllm-serve --model Qwen/Qwen3-4B --tensor_parallel_size 8 --host 0.0.0.0"
    )
    # without server mode the same 3 nodes all train
    argv, env = node_command(
        Path("/c"), nodes=3, gpus_per_node=8, node_rank=2, hostnames=hosts, job_id="5001", python="py"
    )
    assert "--num_machines 3 --machine_rank 2 --num_processes 24" in " ".join(argv) and env == {}


def test_worker_points_trl_at_the_vllm_server_node(monkeypatch):
    from bicc_lab.launch.worker import _placed
    from bicc_lab.spec import ExperimentConfig

    config = ExperimentConfig.model_validate(
        {"name": "v", "model": {"name": "tiny"}, "train": {"use_vllm": True, "vllm_mode": "server"}}
    )
    monkeypatch.delenv("BICC_LAB_VLLM_SERVER_HOST", raising=False)
    assert _placed(config) is config
    monkeypatch.setenv("BICC_LAB_VLLM_SERVER_HOST", "gpu-c")
    assert _placed(config).train.extra == {"vllm_server_host": "gpu-c"}
    colocate = config.model_copy(update={"train": config.train.model_copy(update={"vllm_mode": "colocate"})})
    assert _placed(colocate) is colocate


def test_plan_summary_says_jobs_or_array():
    from bicc_lab.launch import describe_launch

    local = describe_launch(LaunchConfig(), n_cells=4, max_parallel=2, gpus=[0, 1])
    assert local == "launcher local: 2 cell(s) at a time on this machine, GPUs 0, 1 round-robin"
    jobs = describe_launch(
        LaunchConfig(kind="slurm", gpus_per_node=8, mem_gb=200, partition="gpu"),
        n_cells=48, max_parallel=1, gpus=None,
    )
    assert jobs == (
        "launcher slurm: 48 job(s), one per cell; per cell: 1 node(s) x 8 GPU(s), 1 CPU(s)/node, "
        "200 GB/node, 60 min per job (requeued and resumed past it), partition gpu"
    )
    array = describe_launch(
        LaunchConfig(kind="slurm", nodes=2, array_parallelism=6), n_cells=48, max_parallel=1, gpus=None
    )
    assert array.startswith("launcher slurm: one job array of 48 tasks, at most 6 at once;")
    assert "multi-node: accelerate launch across the nodes" in array


def test_launcher_override(tmp_path):
    from bicc_lab.launch import LauncherError
    from bicc_lab.sweep.runner import launch_config

    sweep = load_sweep(_sweep(tmp_path, "launch: {kind: slurm, partition: gpu, gpus_per_node: 4}"))
    assert launch_config(sweep, None) is sweep.spec.launch
    local = launch_config(sweep, "local")
    assert (local.kind, local.partition, local.gpus_per_node) == ("local", None, 4)
    multi = load_sweep(_sweep(tmp_path, "launch: {kind: slurm, nodes: 2}"))
    with pytest.raises(LauncherError, match="launch.nodes = 2"):
        launch_config(multi, "local")


def test_sweep_run_cli_refuses_detach_without_slurm_and_unknown_launchers(tmp_path):
    from typer.testing import CliRunner

    from bicc_lab.cli.main import app

    path = _sweep(tmp_path, "")
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", "run", str(path), "--detach"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: --detach needs the slurm launcher ({path} runs its cells locally; they stop with `sweep run`)"
    ]
    result = runner.invoke(app, ["sweep", "run", str(path), "--launcher", "pbs"])
    assert result.exit_code == 2
    assert "--launcher must be local or slurm, got 'pbs'" in result.output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()
