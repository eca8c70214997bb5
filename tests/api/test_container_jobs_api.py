"""Container jobs through the API: volumes an admin defines, what a submission may ask
for, where the scheduler puts it (only nodes with a container engine, else a reason),
and what the agent is told to run."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from api.conftest import API, Harness
from corral.server.services.volumes import ContainerPolicy
from corral.server.settings import ServerSettings

IMAGE = "nvcr.io/nvidia/pytorch:24.01-py3"


def boxed(**extra: Any) -> dict[str, Any]:
    return {"image": IMAGE, "gpus": 1, **extra}


def error(r: Any) -> tuple[int, str, str | None]:
    body = r.json()["error"]
    return r.status_code, body["message"], body.get("field")


def test_admins_define_volumes_everyone_may_list_them(server: Harness) -> None:
    r = server.post(
        "/volumes",
        {
            "name": "datasets",
            "host_path": "/srv/datasets",
            "read_only": True,
            "description": "shared datasets",
        },
    )
    assert r.status_code == 201, r.text
    assert (
        server.post("/volumes", {"name": "homes", "host_path": "/home/{unix_user}"}).status_code
        == 201
    )
    again = server.post("/volumes", {"name": "datasets", "host_path": "/x"})
    assert again.status_code == 409
    for bad in ("relative/path", "/a/../etc", "/a:b", "/home/{uid}"):
        r = server.post("/volumes", {"name": "bad", "host_path": bad})
        assert r.status_code == 422, (bad, r.text)
    alice = server.make_user("alice")
    listed = server.get("/volumes", alice)["volumes"]
    assert [(v["name"], v["host_path"], v["read_only"]) for v in listed] == [
        ("datasets", "/srv/datasets", True),
        ("homes", "/home/{unix_user}", False),
    ]
    # Only admins create and delete.
    assert server.post("/volumes", {"name": "mine", "host_path": "/tmp"}, alice).status_code == 403
    r = server.http.delete(f"{API}/volumes/homes", headers=server.h(alice))
    assert r.status_code == 403
    r = server.http.delete(f"{API}/volumes/homes", headers=server.h(server.admin))
    assert r.status_code == 204
    assert [v["name"] for v in server.get("/volumes")["volumes"]] == ["datasets"]
    r = server.http.delete(f"{API}/volumes/homes", headers=server.h(server.admin))
    assert r.status_code == 404


def test_a_container_job_is_resolved_and_refused_with_reasons(server: Harness) -> None:
    server.post("/volumes", {"name": "datasets", "host_path": "/srv/datasets", "read_only": True})
    server.post("/volumes", {"name": "homes", "host_path": "/home/{user}"})
    alice = server.make_user("alice")
    r = server.submit(
        "train",
        alice,
        **boxed(
            shm_size_bytes=8 << 30,
            volumes=[
                {"source": "datasets", "target": "/data"},  # read-only by the volume
                {"source": "homes", "target": "/home/me", "read_only": False},
            ],
        ),
    )
    assert r.status_code == 201, r.text
    container = server.job("train")["container"]
    assert container == {
        "image": IMAGE,
        "shm_size_bytes": 8 << 30,
        "mounts": [
            {"source": "/srv/datasets", "target": "/data", "read_only": True, "volume": "datasets"},
            {"source": "/home/alice", "target": "/home/me", "read_only": False, "volume": "homes"},
        ],
        "run_as_root": False,
    }
    assert server.job("train")["container"] is not None
    # Refused, each with the field and the way out.
    cases = [
        (boxed(volumes=[{"source": "nope", "target": "/x"}]), "volumes", "no volume named 'nope'"),
        (boxed(volumes=[{"source": "/etc", "target": "/x"}]), "volumes", "is a host path"),
        (boxed(run_as_root=True), "run_as_root", "--allow-root-containers"),
        (
            {"gpus": 1, "volumes": [{"source": "datasets", "target": "/d"}]},
            "volumes",
            "only for container jobs",
        ),
        (boxed(image="Not An Image"), "image", None),
        (
            boxed(
                volumes=[
                    {"source": "datasets", "target": "/d"},
                    {"source": "homes", "target": "/d/"},
                ]
            ),
            "volumes",
            "same path",
        ),
    ]
    for i, (fields, field, words) in enumerate(cases):
        r = server.submit(f"bad-{i}", alice, **fields)
        status, message, got_field = error(r)
        assert status == 422, (fields, r.text)
        assert field in (got_field or "") or field in message, (fields, r.text)
        if words:
            assert words in message, (fields, message)


def test_a_server_may_allow_host_paths_and_root(server: Harness) -> None:
    server.ctx.settings = replace(
        server.ctx.settings, allow_host_path_volumes=True, allow_root_containers=True
    )
    r = server.submit(
        "free", **boxed(run_as_root=True, volumes=[{"source": "/scratch", "target": "/scratch"}])
    )
    assert r.status_code == 201, r.text
    container = server.job("free")["container"]
    assert container["run_as_root"] is True
    assert container["mounts"] == [
        {"source": "/scratch", "target": "/scratch", "read_only": False, "volume": None}
    ]
    assert ContainerPolicy() == ContainerPolicy(False, False)  # the default allows neither
    assert ServerSettings().allow_host_path_volumes is False
    assert ServerSettings().allow_root_containers is False


def test_container_jobs_go_only_to_nodes_with_docker(server: Harness) -> None:
    plain = server.register("plain", gpus=8)
    docker = server.register("docker", gpus=2, container_engine="docker 20.10.24")
    assert [n["container_engine"] for n in server.get("/nodes")["nodes"]] == [
        "docker 20.10.24",
        None,
    ]
    server.post("/volumes", {"name": "datasets", "host_path": "/srv/datasets"})
    assert (
        server.submit(
            "boxed", **boxed(volumes=[{"source": "datasets", "target": "/d"}])
        ).status_code
        == 201
    )
    assert server.submit("host", gpus=4).status_code == 201
    server.cycle()
    assert server.job("boxed")["node"] == "docker"
    assert server.job("host")["node"] == "plain"
    # The agent is told how to run it; a host job gets no container part.
    by_name = {a["name"]: a for a in server.sync(docker)["assignments"]}
    spec = by_name["boxed"]["container"]
    assert spec["image"] == IMAGE
    assert spec["mounts"][0]["source"] == "/srv/datasets"
    assert by_name["boxed"]["gpu_uuids"] and by_name["boxed"]["gpu_uuids"][0].startswith("GPU-")
    [host] = server.sync(plain)["assignments"]
    assert host["container"] is None
    # A second container job needing more than the Docker node has waits, saying why.
    assert server.submit("big", **boxed(gpus=4)).status_code == 201
    server.cycle()
    big = server.job("big")
    assert big["state"] == "pending"
    assert "with a container engine" in big["reason"], big["reason"]


def test_without_docker_anywhere_a_container_job_waits_and_says_why(server: Harness) -> None:
    server.register("plain", gpus=8)
    assert server.submit("boxed", **boxed()).status_code == 201
    server.cycle()
    job = server.job("boxed")
    assert job["state"] == "pending"
    assert job["reason"].startswith("a container job needs a node with a container engine")
    assert "no node has one" in job["reason"]


def test_a_container_job_without_a_command_runs_its_images_own(server: Harness) -> None:
    node = server.register("dk", gpus=1, container_engine="docker 20.10.24")
    r = server.post("/jobs", {"name": "nb", "image": IMAGE, "command": []})
    assert r.status_code == 201, r.text
    assert r.json()["command"] == []
    plain = server.post("/jobs", {"name": "plain", "command": []})
    assert error(plain)[0] == 422 and error(plain)[2] == "command"
    server.cycle()
    (assignment,) = server.sync(node)["assignments"]
    assert assignment["command"] == [] and assignment["container"]["image"] == IMAGE
