"""The model registry: named models with numbered, immutable versions and movable aliases, in a run storage.

<storage>/models/<name>/<N>/version.json   the version's record: status READY (or REGISTERING while it is being
                                           copied), run id, source, time, tags, metrics, data md5s, versions
                           <N>/model/       the run's final model, test metrics and confusion matrix
                           <N>/config.yaml, metrics.parquet, summary.json, provenance.json (where the run has one)
<storage>/models/<name>/aliases/<alias>.json   {"version": N}: `production`, `champion`, ... point at a version

As in MLflow's file-based registry, a folder per model, one per version, and an aliases folder. Version numbers
are claimed, not computed and written: a registration creates version N's record with an exclusive create
(Storage.create_exclusive: a hard link locally, a conditional PUT on S3), and one that loses the race to another
registration tries N+1. Two registrations at the same moment therefore never share a number. The record says
REGISTERING until the files are copied, then READY; a registration that died half-way leaves its number taken and
its version REGISTERING, never a version that looks complete. A deleted version keeps its record, saying DELETED,
so that a number never names two models.

Records change only from the status a writer read (Storage.update_json: a lock locally, a conditional PUT on S3):
a registration makes READY only its own REGISTERING record, and a deletion makes DELETED only a READY one (or,
forced, a REGISTERING one, whose registration then fails). Aliases move and versions are deleted under the
model's lock (Storage.lock), so an alias never points at a version that is not READY.

A registered model is addressed NAME:N or NAME@alias (NAME alone: its newest READY version).
"""

import contextlib
import json
import re
from datetime import datetime, timezone
from typing import Any

import yaml

from dltrain.runs import PROVENANCE_FILE, TEST_METRICS_FILE, Run, observed_status
from dltrain.storage import Storage

MODELS_FOLDER = "models"
VERSION_FILE = "version.json"
READY, REGISTERING, DELETED = "READY", "REGISTERING", "DELETED"
# What a version copies from its run folder: the final model (model/ whole) and the files that explain it.
_RUN_FILES = ("config.yaml", "metrics.parquet", "summary.json", "provenance.json")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")  # starts with a letter: never mistaken for a version number
_TAG = re.compile(r"(?P<key>[A-Za-z0-9_.-]+)=(?P<value>.*)")
_REFERENCE = re.compile(r"(?P<name>[^:@]+)(?::(?P<version>\d+)|@(?P<alias>.+))?")


def check_name(name: str) -> str:
    """`name` if it can name a model; ValueError otherwise."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a model name: letters, digits, _ . - (up to 100, not starting with . - _)")
    return name


def check_alias(alias: str) -> str:
    """`alias` if it can be an alias; ValueError otherwise."""
    if not _ALIAS.fullmatch(alias):
        raise ValueError(f"{alias!r} is not an alias: a letter, then letters, digits, _ and - (e.g. production)")
    return alias


def parse_tags(pairs: list[str]) -> dict[str, str]:
    """{"k": "v"} from ["k=v", ...]; ValueError naming a pair without `=`."""
    tags = {}
    for pair in pairs:
        match = _TAG.fullmatch(pair)
        if not match:
            raise ValueError(f"tag {pair!r}: expected key=value (key: letters, digits, _ . -)")
        tags[match["key"]] = match["value"]
    return tags


def parse_reference(reference: str) -> tuple[str, int | None, str | None]:
    """(name, version, alias) of NAME, NAME:N or NAME@alias; ValueError otherwise."""
    match = _REFERENCE.fullmatch(reference)
    if not match:
        raise ValueError(f"{reference!r} is not a model reference: NAME, NAME:N or NAME@alias")
    check_name(match["name"])
    if match["alias"] is not None:
        check_alias(match["alias"])
    return match["name"], int(match["version"]) if match["version"] else None, match["alias"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Registry:
    """The registered models of one storage."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def _path(self, *parts: Any) -> str:
        return self.storage.join(MODELS_FOLDER, *map(str, parts))

    def uri_of(self, name: str, version: int) -> str:
        """Where a version's files are, as users see it."""
        return self.storage.uri_of(MODELS_FOLDER, name, str(version))

    def _read(self, *parts: Any) -> dict:
        return self.storage.read_json(self._path(*parts))

    def _version_numbers(self, name: str) -> list[int]:
        return sorted(int(folder) for folder in self.storage.list_folders(self._path(name)) if folder.isdigit())

    def register(self, run: Run, name: str, tags: dict[str, str], alias: str | None = None) -> dict:
        """Copy `run`'s final model and its records (the run is in this registry's storage) into the next version
        of `name`, and point `alias` at it, if given; returns the READY version record."""
        check_name(name)
        if alias is not None:
            check_alias(alias)
        run_status = run.status()
        status = observed_status(run_status)
        files = run.storage.list_files(run.path)  # no symbolic link is read or copied, nor what one points at
        if status != "COMPLETED" or f"model/{TEST_METRICS_FILE}" not in files:
            raise ValueError(f"run {run.id} is {status}: only a COMPLETED run's final model can be registered")
        record = {
            "name": name,
            "version": None,
            "status": REGISTERING,
            "run_id": run.id,
            "source": run.uri,
            "created": _now(),
            "tags": tags,
            "metrics": run.test_metrics(),
            "library_versions": run_status.get("versions", {}),
            # command line, git commit, data md5s (None for older runs)
            "provenance": run.provenance() if PROVENANCE_FILE in files else None,
        }
        version = (self._version_numbers(name) or [0])[-1] + 1
        while True:  # claim the next free number; another registration may take it first
            record["version"] = version
            if self.storage.create_exclusive(self._path(name, version, VERSION_FILE), json.dumps(record).encode()):
                break
            version += 1
        folder = self._path(name, version)
        copied = [relative for relative in files if relative.startswith("model/") or relative in _RUN_FILES]
        try:
            for relative in copied:  # on S3 a server-side copy: nothing passes through this machine
                self.storage.filesystem.create_dir(f"{folder}/{relative}".rsplit("/", 1)[0], recursive=True)
                self.storage.filesystem.copy_file(f"{run.path}/{relative}", f"{folder}/{relative}")
        except OSError:
            # `models delete --force` removed the folder under the copy: said below, as after a whole copy.
            if self._read(name, version, VERSION_FILE)["status"] == REGISTERING:
                raise

        def ready(current: dict | None) -> dict | None:
            return record | {"status": READY} if current and current["status"] == REGISTERING else None

        # READY only over this registration's REGISTERING record: `models delete --force` may have deleted it.
        if self.storage.update_json(self._path(name, version, VERSION_FILE), ready)["status"] != READY:
            self._remove_files(name, version)
            raise ValueError(f"{name}:{version} was deleted while it was being registered: nothing was registered")
        record["status"] = READY
        if alias is not None:
            self.set_alias(name, version, alias)
        return record

    def names(self) -> list[str]:
        """Every registered model's name."""
        return self.storage.list_folders(self._path())

    def versions(self, name: str) -> list[dict]:
        """Every version record of `name`, oldest first (REGISTERING ones included); ValueError if none."""
        numbers = self._version_numbers(check_name(name))
        if not numbers:
            raise ValueError(f"no model {name!r} in {self.storage.uri_of(MODELS_FOLDER)}")
        return [self._read(name, number, VERSION_FILE) for number in numbers]

    def aliases(self, name: str) -> dict[str, int]:
        """{alias: version} of `name`."""
        files = self.storage.list_files(self._path(check_name(name), "aliases"))
        return {
            file.removesuffix(".json"): self._read(name, "aliases", file)["version"]
            for file in sorted(files)
            if file.endswith(".json")
        }

    def get(self, reference: str) -> dict:
        """The READY version record NAME:N, NAME@alias or NAME (the newest) addresses; ValueError otherwise."""
        name, version, alias = parse_reference(reference)
        records = {record["version"]: record for record in self.versions(name)}
        if alias is not None:
            aliases = self.aliases(name)
            if alias not in aliases:
                choices = ", ".join(aliases) or "none yet"
                raise ValueError(f"model {name!r} has no alias {alias!r} (its aliases: {choices})")
            version = aliases[alias]
        if version is None:
            ready = [number for number, record in records.items() if record["status"] == READY]
            if not ready:
                raise ValueError(f"model {name!r} has no READY version yet")
            version = ready[-1]
        if version not in records:
            raise ValueError(f"model {name!r} has no version {version} (versions: {', '.join(map(str, records))})")
        if records[version]["status"] != READY:
            raise ValueError(f"{name}:{version} is {records[version]['status']}, not READY")
        return records[version]

    def config(self, name: str, version: int) -> dict:
        """The saved (redacted) config of the run version `version` of `name` came from: the version's copy."""
        return yaml.safe_load(self.storage.read_bytes(self._path(check_name(name), version, "config.yaml")))

    def model_path(self, record: dict) -> str:
        """The storage path of a version's model/ folder (model.keras, test metrics, confusion matrix)."""
        return f"{self._path(record['name'], record['version'])}/model"

    def set_alias(self, name: str, version: int, alias: str) -> int | None:
        """Point `alias` of `name` at READY `version`; returns the version it pointed at before, if any. Holds
        the model's lock, as `delete` does: an alias never lands on a version being deleted."""
        check_alias(alias)
        with self.storage.lock(self._path(check_name(name))):
            self.get(f"{name}:{version}")
            before = self.aliases(name).get(alias)
            self.storage.write_bytes(
                self._path(name, "aliases", f"{alias}.json"),
                json.dumps({"version": version, "updated": _now()}).encode(),
            )
        return before

    def delete(self, name: str, version: int, force: bool = False) -> None:
        """Remove the files of READY version `version` of `name`, whose record then says DELETED; ValueError if it
        does not exist, an alias points at it, or it is not READY. With `force`, also a REGISTERING one (whose
        registration, if still under way, then fails instead of making it READY).

        Holds the model's lock, as `set_alias` does, and changes the record only from the status it checked."""
        deletable = (READY, REGISTERING) if force else (READY,)
        with self.storage.lock(self._path(check_name(name))):
            records = {record["version"]: record for record in self.versions(name)}
            status = records.get(version, {}).get("status")
            if status in (None, DELETED):
                live = ", ".join(str(number) for number, record in records.items() if record["status"] != DELETED)
                raise ValueError(f"model {name!r} has no version {version} (versions: {live or 'none'})")
            pointing = sorted(alias for alias, target in self.aliases(name).items() if target == version)
            if pointing:
                raise ValueError(
                    f"{name}:{version} is {', '.join('@' + alias for alias in pointing)}: "
                    f"move the alias first (dltrain models alias {name} N {pointing[0]})"
                )

            def deleted(current: dict | None) -> dict | None:
                if current is None or current["status"] not in deletable:
                    return None
                return current | {"status": DELETED, "deleted": _now()}

            # The record stays, saying DELETED, so that the number is never given to another model.
            after = self.storage.update_json(self._path(name, version, VERSION_FILE), deleted)
        if after["status"] != DELETED:
            raise ValueError(
                f"{name}:{version} is {after['status']}, not READY: a registration is copying it, or died doing so "
                f"(--force deletes it; a registration still under way then fails)"
            )
        self._remove_files(name, version)

    def _remove_files(self, name: str, version: int) -> None:
        """Remove every file of a version but its record (what is already gone, by a concurrent removal, is)."""
        folder = self._path(name, version)
        for relative in self.storage.list_files(folder):
            if relative != VERSION_FILE:
                with contextlib.suppress(FileNotFoundError):
                    self.storage.filesystem.delete_file(f"{folder}/{relative}")
        for subfolder in self.storage.list_folders(folder):  # model/, now empty
            with contextlib.suppress(FileNotFoundError):
                self.storage.filesystem.delete_dir(f"{folder}/{subfolder}")
