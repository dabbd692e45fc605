"""deploy/k8s: the core-API objects against a pinned Kubernetes schema (kubernetes-validate,
strict: unknown fields fail), the RayService's own shape against the schema below, its pod
templates as core PodTemplates, and its Serve config with Ray's own schema. No cluster runs
here: what a real API server or the KubeRay operator would add is not checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="needs the ray extra (kubernetes-validate)"
)
jsonschema = pytest.importorskip("jsonschema")

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
#: The Kubernetes version the manifests are checked against.
KUBERNETES_VERSION = "1.33.0"

_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_POD_TEMPLATE = {"type": "object", "required": ["spec"]}  # checked as a core PodTemplate
#: The part of KubeRay's RayService CRD (ray.io/v1) these manifests use; unknown keys fail,
#: so a misspelt field is caught (the CRD itself has many more optional fields).
RAYSERVICE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["serveConfigV2", "rayClusterConfig"],
            "properties": {
                "serveConfigV2": {"type": "string"},
                "rayClusterConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["headGroupSpec"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "headGroupSpec": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["rayStartParams", "template"],
                            "properties": {
                                "rayStartParams": _STRINGS,
                                "template": _POD_TEMPLATE,
                            },
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["groupName", "rayStartParams", "template"],
                                "properties": {
                                    "groupName": {"type": "string"},
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer", "minimum": 0},
                                    "rayStartParams": _STRINGS,
                                    "template": _POD_TEMPLATE,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def documents() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def core_objects() -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in documents() if doc["apiVersion"] != "ray.io/v1"]


def rayservice() -> dict:
    (service,) = [doc for _, doc in documents() if doc["kind"] == "RayService"]
    return service


def ray_pod_templates(service: dict) -> list[dict]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [group["template"] for group in groups]


@pytest.mark.parametrize(
    ("name", "doc"), core_objects(), ids=[f"{n}:{d['kind']}" for n, d in core_objects()]
)
def test_core_objects_are_valid_kubernetes(name: str, doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_a_misspelt_field() -> None:
    """The check above can fail: an unknown field in a DaemonSet's container is refused."""
    (_, daemonset) = next((n, d) for n, d in core_objects() if d["kind"] == "DaemonSet")
    broken = yaml.safe_load(yaml.safe_dump(daemonset))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_rayservice_has_the_kuberay_shape_and_valid_pod_templates() -> None:
    service = rayservice()
    jsonschema.validate(service, RAYSERVICE_SCHEMA)
    for template in ray_pod_templates(service):
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "ray-pod"},
            "template": template,
        }
        kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)
    typo = yaml.safe_load(yaml.safe_dump(service))
    typo["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, RAYSERVICE_SCHEMA)


def test_the_serve_config_is_valid_for_ray_and_names_our_deployment() -> None:
    """Ray's own schema for serveConfigV2; the import path, deployment name and environment
    names are those of services/tail/ray_app.py."""
    schema = pytest.importorskip("ray.serve.schema", reason="needs the ray extra")
    ray_app = pytest.importorskip("services.tail.ray_app", reason="needs the ray extra")
    config = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    schema.ServeDeploySchema.model_validate(config)
    (application,) = config["applications"]
    module, _, attribute = application["import_path"].partition(":")
    assert module == ray_app.__name__ and hasattr(ray_app, attribute)
    assert [d["name"] for d in application["deployments"]] == [ray_app.DEPLOYMENT]
    fields = {f"SPLITDNN_TAIL_{name.upper()}" for name in ray_app.RayTailSettings.model_fields} | {
        "SPLITDNN_BUNDLE",
        "SPLITDNN_TOKEN",
    }
    assert set(application["runtime_env"]["env_vars"]) <= fields


def test_the_device_is_probed_resourced_on_arm64_and_runs_gateway_and_head_in_one_process():
    daemonsets = {d["metadata"]["name"]: d for _, d in core_objects() if d["kind"] == "DaemonSet"}
    assert set(daemonsets) == {"splitdnn-device"}
    pod = daemonsets["splitdnn-device"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    (container,) = pod["containers"]
    assert container["args"][:3] == ["splitdnn", "serve", "device"]
    assert "https://splitdnn-tail-serve-svc:8000" in container["args"]
    assert _probe_path(container["livenessProbe"]) == "/v2/health/live"
    assert _probe_path(container["readinessProbe"]) == "/v2/health/ready"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "cpu" in container["resources"]["limits"]  # its threads follow this quota
    names = {e["name"] for e in container["env"]}
    assert not any(n.endswith("_INTRA_OP_THREADS") for n in names)  # sized, not set by hand
    assert any(v["name"] == "bundle" for v in pod["volumes"])
    (service,) = [d for _, d in core_objects() if d["kind"] == "Service"]
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "splitdnn-device"}
    assert service["spec"]["ports"][0]["nodePort"] == 30080
    for template in ray_pod_templates(rayservice()):
        (container,) = template["spec"]["containers"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"name": "bundle", "mountPath": "/bundle", "readOnly": True} in container[
            "volumeMounts"
        ]


def _probe_path(probe: dict) -> str:
    """The path a probe asks: an httpGet's, or the healthcheck script's (its argument, else
    the ready route), which shows the pod's TLS certificate to a mutual-TLS head."""
    if "httpGet" in probe:
        return probe["httpGet"]["path"]
    command = probe["exec"]["command"]
    assert command[:2] == ["python3", "/usr/local/lib/splitdnn-docker/healthcheck.py"]
    return command[2] if len(command) > 2 else "/v2/health/ready"


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_every_hop_is_https_with_certificates_mounted_from_secrets() -> None:
    """The device and the Ray tail serve and call https with the files of one Secret each
    (mounted at /certs), named by SPLITDNN_TLS_* or Serve's http_options."""
    secrets = {}
    for _, doc in core_objects():
        if doc["kind"] != "DaemonSet":
            continue
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = _env(container)
        assert (env["SPLITDNN_TLS_CERT"], env["SPLITDNN_TLS_KEY"], env["SPLITDNN_TLS_CA"]) == (
            "/certs/tls.crt", "/certs/tls.key", "/certs/ca.crt",
        )  # fmt: skip
        assert {"name": "tls", "mountPath": "/certs", "readOnly": True} in container["volumeMounts"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        secrets[doc["metadata"]["name"]] = volume["secret"]["secretName"]
        assert not [a for a in container["args"] if a.startswith("http://")], container["args"]
    assert secrets == {"splitdnn-device": "splitdnn-tls-head"}  # to the tail it is the head
    options = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])["http_options"]
    assert options["ssl_certfile"] == "/certs/tls.crt" and options["ssl_ca_certs"]
    for template in ray_pod_templates(rayservice()):
        (container,) = template["spec"]["containers"]
        assert {"name": "tls", "mountPath": "/certs", "readOnly": True} in container["volumeMounts"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
