"""Per-instance disks: real qemu-img, real files, idempotent create and delete."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from nebula_node.disks import (
    GIB,
    BaseImageUnusable,
    DiskConflict,
    DiskTooSmall,
    InstanceDisks,
    QemuImgFailed,
    check_instance_id,
)

INSTANCE = "6f1c2d3e-4b5a-4789-9abc-def012345678"


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def info(path: Path) -> dict:
    return json.loads(qemu_img("info", "-U", "--output=json", str(path)))


@pytest.fixture
def disks(tmp_path: Path) -> InstanceDisks:
    return InstanceDisks(tmp_path / "instances")


@pytest.fixture
def base_qcow2(tmp_path: Path) -> Path:
    path = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "64M")
    return path


@pytest.fixture
def base_raw(tmp_path: Path) -> Path:
    path = tmp_path / "base.raw"
    qemu_img("create", "-q", "-f", "raw", str(path), "64M")
    return path


# --- overlays ----------------------------------------------------------------------------


async def test_overlay_is_qcow2_backed_by_the_base_at_the_requested_size(disks, base_qcow2):
    path = await disks.create_overlay(INSTANCE, base_qcow2, 2)

    assert path == disks.instance_dir(INSTANCE) / "disk.qcow2"
    details = info(path)
    assert details["format"] == "qcow2"
    assert details["virtual-size"] == 2 * GIB
    assert details["backing-filename"] == str(base_qcow2.resolve())
    assert details["backing-filename-format"] == "qcow2"


async def test_overlay_on_a_raw_base_pins_the_backing_format_to_raw(disks, base_raw):
    path = await disks.create_overlay(INSTANCE, base_raw, 1)
    assert info(path)["backing-filename-format"] == "raw"


async def test_overlay_create_twice_returns_the_same_untouched_disk(disks, base_qcow2):
    first = await disks.create_overlay(INSTANCE, base_qcow2, 1)
    before = first.stat()

    second = await disks.create_overlay(INSTANCE, base_qcow2, 1)

    assert second == first
    assert (second.stat().st_ino, second.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in disks.instance_dir(INSTANCE).iterdir()) == ["disk.qcow2"]


async def test_concurrent_identical_overlay_creates_all_succeed(disks, base_qcow2):
    paths = await asyncio.gather(*(disks.create_overlay(INSTANCE, base_qcow2, 1) for _ in range(4)))
    assert set(paths) == {disks.instance_dir(INSTANCE) / "disk.qcow2"}


async def test_overlay_with_another_size_conflicts(disks, base_qcow2):
    await disks.create_overlay(INSTANCE, base_qcow2, 1)

    with pytest.raises(DiskConflict) as caught:
        await disks.create_overlay(INSTANCE, base_qcow2, 2)

    assert caught.value.existing.virtual_size == 1 * GIB
    assert caught.value.requested.virtual_size == 2 * GIB
    assert info(caught.value.path)["virtual-size"] == 1 * GIB


async def test_overlay_on_another_base_conflicts(disks, base_qcow2, base_raw):
    await disks.create_overlay(INSTANCE, base_qcow2, 1)
    with pytest.raises(DiskConflict):
        await disks.create_overlay(INSTANCE, base_raw, 1)


async def test_base_larger_than_the_requested_disk_is_refused(disks, tmp_path):
    big_base = tmp_path / "big.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(big_base), "3G")

    with pytest.raises(DiskTooSmall) as caught:
        await disks.create_overlay(INSTANCE, big_base, 2)

    assert (caught.value.base_size, caught.value.requested_size) == (3 * GIB, 2 * GIB)
    assert not disks.instance_dir(INSTANCE).exists()


async def test_base_exactly_the_requested_size_is_accepted(disks, tmp_path):
    base = tmp_path / "exact.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1G")
    assert info(await disks.create_overlay(INSTANCE, base, 1))["virtual-size"] == GIB


async def test_missing_base_is_unusable(disks, tmp_path):
    with pytest.raises(BaseImageUnusable, match="no such file"):
        await disks.create_overlay(INSTANCE, tmp_path / "gone.qcow2", 1)


async def test_base_with_a_backing_file_of_its_own_is_unusable(disks, base_qcow2, tmp_path):
    chained = tmp_path / "chained.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base_qcow2), str(chained))

    with pytest.raises(BaseImageUnusable, match="backing file"):
        await disks.create_overlay(INSTANCE, chained, 1)


async def test_unreadable_base_reports_qemu_img_stderr(disks, tmp_path):
    corrupt = tmp_path / "corrupt.qcow2"
    corrupt.write_bytes(b"QFI\xfb" + b"\xff" * 508)  # qcow2 magic, nonsense header

    with pytest.raises(QemuImgFailed) as caught:
        await disks.create_overlay(INSTANCE, corrupt, 1)

    assert caught.value.returncode != 0
    assert caught.value.stderr.strip()
    assert str(corrupt) in caught.value.argv


async def test_qemu_img_that_hangs_is_killed_and_reported(tmp_path):
    hanging = tmp_path / "qemu-img"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    hanging.chmod(0o755)
    disks = InstanceDisks(tmp_path / "instances", qemu_img=str(hanging), timeout=0.2)

    with pytest.raises(QemuImgFailed, match="no answer") as caught:
        await disks.create_blank(INSTANCE, 1)

    assert caught.value.returncode is None
    assert [p.name for p in disks.instance_dir(INSTANCE).iterdir()] == []  # no temp file left


async def test_missing_qemu_img_is_reported_as_qemu_img_failed(tmp_path):
    disks = InstanceDisks(tmp_path / "instances", qemu_img=str(tmp_path / "no-such-qemu-img"))
    with pytest.raises(QemuImgFailed, match="cannot start"):
        await disks.create_blank(INSTANCE, 1)


# --- blank disks -------------------------------------------------------------------------


async def test_blank_disk_is_an_unbacked_qcow2_of_the_requested_size(disks):
    path = await disks.create_blank(INSTANCE, 3)

    assert path == disks.instance_dir(INSTANCE) / "data.qcow2"
    details = info(path)
    assert (details["format"], details["virtual-size"]) == ("qcow2", 3 * GIB)
    assert "backing-filename" not in details


async def test_blank_disk_create_twice_is_idempotent_and_another_size_conflicts(disks):
    first = await disks.create_blank(INSTANCE, 1, name="scratch")
    assert await disks.create_blank(INSTANCE, 1, name="scratch") == first

    with pytest.raises(DiskConflict):
        await disks.create_blank(INSTANCE, 2, name="scratch")


async def test_blank_disk_beside_an_overlay_is_a_separate_file(disks, base_qcow2):
    overlay = await disks.create_overlay(INSTANCE, base_qcow2, 1)
    blank = await disks.create_blank(INSTANCE, 1)
    assert overlay != blank and overlay.parent == blank.parent


@pytest.mark.parametrize("name", ["../evil", "Data", "", "a/b", "x" * 33])
async def test_blank_disk_name_must_be_a_plain_word(disks, name):
    with pytest.raises(ValueError, match="disk name"):
        await disks.create_blank(INSTANCE, 1, name=name)


@pytest.mark.parametrize("size_gb", [0, -1, 1.5, True])
async def test_disk_size_must_be_a_positive_whole_number_of_gib(disks, size_gb):
    with pytest.raises(ValueError, match="disk size"):
        await disks.create_blank(INSTANCE, size_gb)


# --- delete and paths --------------------------------------------------------------------


async def test_delete_removes_every_disk_of_the_instance(disks, base_qcow2):
    await disks.create_overlay(INSTANCE, base_qcow2, 1)
    await disks.create_blank(INSTANCE, 1)
    disks.console_log_path(INSTANCE).write_text("boot\n")

    await disks.delete(INSTANCE)

    assert not disks.instance_dir(INSTANCE).exists()
    assert base_qcow2.exists()


async def test_delete_of_a_missing_instance_succeeds(disks):
    await disks.delete(INSTANCE)
    await disks.delete(INSTANCE)


async def test_delete_leaves_other_instances_alone(disks):
    other = str(uuid.uuid4())
    await disks.create_blank(INSTANCE, 1)
    kept = await disks.create_blank(other, 1)

    await disks.delete(INSTANCE)

    assert kept.exists()


def test_console_log_lives_in_the_instance_directory(disks):
    assert disks.console_log_path(INSTANCE) == disks.root / INSTANCE / "console.log"


@pytest.mark.parametrize(
    "instance_id",
    ["../etc", "", "abc", "/tmp/x", f"{INSTANCE}/..", f"{{{INSTANCE}}}", INSTANCE.replace("-", "")],
)
async def test_instance_id_must_be_a_uuid(disks, base_qcow2, instance_id):
    with pytest.raises(ValueError, match="UUID"):
        disks.console_log_path(instance_id)
    with pytest.raises(ValueError, match="UUID"):
        await disks.create_overlay(instance_id, base_qcow2, 1)
    with pytest.raises(ValueError, match="UUID"):
        await disks.delete(instance_id)
    assert not disks.root.exists()


def test_instance_ids_are_canonicalised_to_lowercase():
    assert check_instance_id(INSTANCE.upper()) == INSTANCE
    assert check_instance_id(uuid.UUID(INSTANCE)) == INSTANCE
