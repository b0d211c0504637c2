"""Deployment files under ``infra/``: they parse, validate against the schemas available offline, agree with each
other (images, secrets, selectors, ports) and with the package (dependencies, job files, config keys)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml

from cion_dist.config import load_job

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
IMAGE = "ghcr.io/cion-dist/cion-dist:0.1.0-gpu"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _by_kind(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in _docs(path):
        out.setdefault(d["kind"], []).append(d)
    return out


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


# ---------------------------------------------------------------- every YAML


def test_every_yaml_parses_into_mappings():
    files = sorted(INFRA.rglob("*.yaml"))
    assert {p.relative_to(INFRA).as_posix() for p in files} >= {
        "kuberay/raycluster.yaml",
        "kuberay/rayjob-pretrain.yaml",
        "kuberay/s3-secret.example.yaml",
        "cluster-launcher/aws-gpu.yaml",
        "mlflow/mlflow.yaml",
        "mlflow/postgres.yaml",
        "mlflow/secrets.example.yaml",
    }
    for p in files:
        docs = _docs(p)
        assert docs, f"{p} is empty"
        assert all(isinstance(d, dict) for d in docs), p
        if "kuberay" in p.parts or "mlflow" in p.parts:
            for d in docs:
                assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), p


# ---------------------------------------------------------------- cluster launcher


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load((INFRA / "cluster-launcher" / "aws-gpu.yaml").read_text())


def test_cluster_launcher_validates_against_rays_schema(launcher):
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)
    # the same schema rejects a typo, so the check above has teeth
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**launcher, "max_worker": 3}, schema)
    with pytest.raises(jsonschema.ValidationError):
        bad = json.loads(json.dumps(launcher))
        bad["available_node_types"]["gpu_1x"]["resources"]["GPU"] = "one"
        jsonschema.validate(bad, schema)


def test_cluster_launcher_node_types_are_consistent(launcher):
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    assert types[launcher["head_node_type"]]["resources"].get("CPU") == 0  # the head runs no tasks
    workers = {k: v for k, v in types.items() if k != launcher["head_node_type"]}
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) > 0}
    assert gpu, "no GPU worker type"
    for name, t in workers.items():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"], name
        assert t["node_config"]["InstanceType"], name
    assert all(t["max_workers"] <= launcher["max_workers"] for t in workers.values())
    assert sum(t.get("min_workers", 0) for t in workers.values()) <= launcher["max_workers"]
    assert launcher["provider"]["type"] == "aws"
    assert launcher["docker"]["image"] == IMAGE
    assert any("--head" in c for c in launcher["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in launcher["worker_start_ray_commands"])
    for _remote, local in launcher["file_mounts"].items():
        assert (ROOT / local).exists(), f"file mount source {local} missing"


# ---------------------------------------------------------------- Dockerfile


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        lines.append(buf)
        buf = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def test_dockerfile_builds_the_gpu_stack():
    ins = _dockerfile_instructions(INFRA / "Dockerfile")
    kinds = [k for k, _ in ins]
    assert kinds.count("FROM") == 1
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for k, a in ins if k == "ARG" and "=" in a}
    assert re.search(r"pytorch.*cuda.*devel", args["BASE_IMAGE"])  # CUDA torch with nvcc for the DeepSpeed ops
    runs = " ".join(a for k, a in ins if k == "RUN")
    ds = next(a for k, a in ins if k == "RUN" and "deepspeed" in a)
    for flag in ("DS_BUILD_CPU_ADAM=1", "DS_BUILD_FUSED_ADAM=1", "DS_BUILD_UTILS=1"):
        assert flag in ds
    assert "--no-build-isolation" in ds and "ds_report" in ds
    assert "TORCH_CUDA_ARCH_LIST" in args
    assert "pip install -r /tmp/requirements-gpu.txt" in runs
    assert "pip install --no-deps ." in runs  # the package without pulling the CPU builds back in
    assert "StandardGpuResources" in runs and "CUDAExecutionProvider" in runs
    copies = [a for k, a in ins if k == "COPY"]
    assert any(a.startswith("cion_dist") for a in copies) and any(a.startswith("jobs") for a in copies)
    assert ("USER", "ray") in ins
    # every COPY source is in the build context the .dockerignore lets through
    ignore = (INFRA / "Dockerfile.dockerignore").read_text()
    for a in copies:
        for src in a.split()[:-1]:
            assert (ROOT / src).exists() or src == "README.md", src
            assert f"!{src}" in ignore or f"!{src}/**" in ignore, src


def _req_name(spec: str) -> str:
    return re.split(r"[\[<>=!~; ]", spec.strip(), maxsplit=1)[0].lower()


def test_gpu_requirements_cover_every_package_dependency():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    req = [ln for ln in (INFRA / "requirements-gpu.txt").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    have = {_req_name(r) for r in req}
    swaps = {"faiss-cpu": "faiss-gpu", "onnxruntime": "onnxruntime-gpu"}
    from_base = {"torch", "deepspeed"}  # the CUDA base image and the DeepSpeed build step
    missing = [d for d in deps if _req_name(d) not in from_base and swaps.get(_req_name(d), _req_name(d)) not in have]
    assert not missing, f"pyproject dependencies absent from infra/requirements-gpu.txt: {missing}"
    assert not have & set(swaps), "a CPU-only build is listed next to its GPU build"
    assert any(r.startswith("ray[") and "==" in r for r in req), "pin Ray: client and cluster must match"


# ---------------------------------------------------------------- KubeRay


def _check_ray_pod_groups(spec: dict, where: str) -> None:
    head = spec["headGroupSpec"]
    groups = spec["workerGroupSpecs"]
    for params in [head["rayStartParams"], *(g["rayStartParams"] for g in groups)]:
        # KubeRay's CRD types rayStartParams as map[string]string: a bare YAML number is rejected by the API
        assert all(isinstance(v, str) for v in params.values()), (where, params)
        assert "object-store-memory" in params, where
    assert head["rayStartParams"]["num-cpus"] == "0", where
    templates = [head["template"], *(g["template"] for g in groups)]
    for t in templates:
        for c in _containers(t):
            assert c["image"] == IMAGE, where
            assert {"secretRef": {"name": "cion-s3"}} in c.get("envFrom", []), (where, c["name"])
            assert any(m["mountPath"] == "/dev/shm" for m in c.get("volumeMounts", [])), where
        vols = {v["name"] for v in t["spec"].get("volumes", [])}
        assert {m["name"] for c in _containers(t) for m in c.get("volumeMounts", [])} <= vols, where
    gpu = [g for g in groups if any("nvidia.com/gpu" in c["resources"]["limits"] for c in _containers(g["template"]))]
    assert gpu, f"{where}: no GPU worker group"
    for g in gpu:
        c = _containers(g["template"])[0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"]
        assert any(t["key"] == "nvidia.com/gpu" for t in g["template"]["spec"]["tolerations"])
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], (where, g["groupName"])
    assert len({g["groupName"] for g in groups}) == len(groups)


def test_raycluster_has_autoscaling_gpu_workers_and_secret_refs():
    (rc,) = _by_kind(INFRA / "kuberay" / "raycluster.yaml")["RayCluster"]
    assert rc["apiVersion"] == "ray.io/v1"
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == _pinned_ray()
    _check_ray_pod_groups(spec, "raycluster.yaml")
    ports = {p["containerPort"] for p in _containers(spec["headGroupSpec"]["template"])[0]["ports"]}
    assert {6379, 8265, 10001} <= ports


def _pinned_ray() -> str:
    req = (INFRA / "requirements-gpu.txt").read_text()
    return re.search(r"^ray\[[^\]]*\]==([\d.]+)", req, re.M).group(1)


def test_rayjob_entrypoint_is_a_valid_cion_run():
    (rj,) = _by_kind(INFRA / "kuberay" / "rayjob-pretrain.yaml")["RayJob"]
    assert rj["apiVersion"] == "ray.io/v1"
    spec = rj["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["cion", "run"]
    job_file, overrides = argv[2], argv[3:]
    assert job_file in ("jobs/pretrain.yaml", "jobs/pipeline.yaml")
    job = load_job(str(ROOT / job_file), overrides)  # the image's WORKDIR holds jobs/, as the repository does
    assert job.stage in ("pretrain", "pipeline")
    assert job.output.startswith("s3://")
    assert job.pretrain.use_gpu is True
    gpus = sum(
        g["maxReplicas"] * int(_containers(g["template"])[0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        for g in spec["rayClusterSpec"]["workerGroupSpecs"]
    )
    assert job.pretrain.num_workers <= gpus, "more training workers than GPUs the cluster may grow to"
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    assert spec["rayClusterSpec"]["rayVersion"] == _pinned_ray()
    _check_ray_pod_groups(spec["rayClusterSpec"], "rayjob-pretrain.yaml")


def test_s3_secret_example_carries_the_keys_the_pods_read():
    (sec,) = _by_kind(INFRA / "kuberay" / "s3-secret.example.yaml")["Secret"]
    assert sec["metadata"]["name"] == "cion-s3"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(sec["stringData"])
    assert all(v.startswith("<") or v.startswith("us-") for v in sec["stringData"].values())  # placeholders only


# ---------------------------------------------------------------- MLflow server


def _check_service_selects(deploy: dict, svc: dict) -> None:
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for c in _containers(deploy["spec"]["template"]) for p in c["ports"]}
    assert all(p["targetPort"] in port_names for p in svc["spec"]["ports"])


def test_mlflow_server_uses_postgres_and_s3_with_secrets():
    objs = _by_kind(INFRA / "mlflow" / "mlflow.yaml")
    (deploy,), (svc,) = objs["Deployment"], objs["Service"]
    _check_service_selects(deploy, svc)
    (c,) = _containers(deploy["spec"]["template"])
    args = dict(a.split("=", 1) for a in c["args"] if "=" in a)
    assert args["--backend-store-uri"].startswith("postgresql://")
    assert args["--artifacts-destination"].startswith("s3://")
    # every $(VAR) the args use is defined in env, from a Secret
    env = {e["name"]: e for e in c["env"]}
    for var in re.findall(r"\$\((\w+)\)", " ".join(c["args"])):
        assert "secretKeyRef" in env[var]["valueFrom"], var
    assert {"secretRef": {"name": "cion-s3"}} in c["envFrom"]
    host = re.search(r"@([\w-]+):(\d+)/", args["--backend-store-uri"])
    pg = _by_kind(INFRA / "mlflow" / "postgres.yaml")
    (pg_svc,) = pg["Service"]
    assert pg_svc["metadata"]["name"] == host.group(1)
    assert int(host.group(2)) in {p["port"] for p in pg_svc["spec"]["ports"]}
    (sts,) = pg["StatefulSet"]
    _check_service_selects(sts, pg_svc)
    (secret,) = _by_kind(INFRA / "mlflow" / "secrets.example.yaml")["Secret"]
    refs = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in c["env"] + _containers(sts["spec"]["template"])[0]["env"]
        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret["metadata"]["name"]
    }
    assert refs <= set(secret["stringData"])
    # the Ray pods point at this Service
    (rc,) = _by_kind(INFRA / "kuberay" / "raycluster.yaml")["RayCluster"]
    uri = next(
        e["value"]
        for e in _containers(rc["spec"]["headGroupSpec"]["template"])[0]["env"]
        if e["name"] == "MLFLOW_TRACKING_URI"
    )
    assert uri.startswith(f"http://{svc['metadata']['name']}.") and uri.endswith(f":{svc['spec']['ports'][0]['port']}")


def test_readme_names_every_infra_file():
    text = (INFRA / "README.md").read_text()
    for p in sorted(INFRA.rglob("*")):
        if p.is_file() and p.name != "README.md":
            assert p.relative_to(INFRA).as_posix() in text, p
