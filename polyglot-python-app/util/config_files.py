"""Spring Boot's config files: where they are looked for, which are read, and how their documents merge.

Locations, lowest precedence first (a later one overrides an earlier one, as in Spring Boot): the group
``./;./config/;./config/*/;/config/`` (the last is where Data Flow's Kubernetes deployer writes a
StatefulSet pod's instance index, whatever the working directory), then the locations of
``spring.config.additional-location``. ``spring.config.location`` replaces the default ones. Within a
location ``application.properties`` overrides ``application.yml``, which overrides ``application.yaml``.
Locations are read a group at a time (a comma separates groups, ``;`` the locations of one group): the
group's plain files, then each active profile's ``application-<profile>`` files (``name-<profile>.ext``
beside a file location), a later profile above an earlier one. A document with
``spring.config.activate.on-profile`` counts when its expression matches.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path

from . import config_formats, config_imports
from . import profiles as profiles_
from .config_formats import ConfigFileError
from .config_imports import Found

DEFAULT_LOCATIONS = ("optional:file:./;optional:file:./config/;optional:file:./config/*/;optional:file:/config/",)
LOCATION = "spring.config.location"
ADDITIONAL_LOCATION = "spring.config.additional-location"
EXTENSIONS = (".yaml", ".yml", ".properties")  # lowest precedence first
ON_PROFILE = "spring.config.activate.on-profile"  # a document only a profile activates
_CONDITIONS = ("spring.config.activate.onprofile", "spring.profiles")  # relaxed; the second is Boot 2's
_PROFILE_CHOICES = ("spring.profiles.active", "spring.profiles.include", "spring.profiles.default")
_ON_PLATFORM = "spring.config.activate.on-cloud-platform"
# Boot's CloudPlatform, in its order: the environment variables that say a platform runs the app.
_PLATFORMS = (("cloud_foundry", ("VCAP_APPLICATION",)), ("cloud_foundry", ("VCAP_SERVICES",)), ("heroku", ("DYNO",)),
              ("sap", ("HC_LANDSCAPE",)), ("nomad", ("NOMAD_ALLOC_ID",)),
              ("kubernetes", ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")),
              ("azure_app_service", ("WEBSITE_SITE_NAME", "WEBSITE_INSTANCE_ID", "WEBSITE_RESOURCE_GROUP",
                                     "WEBSITE_SKU")))
# The platform of the load under way (load() sets it for _merge, however deep the imports that read a file).
_PLATFORM: ContextVar[str | None] = ContextVar("platform", default=None)


def load(locations: list[tuple[str, str | None]], profiles: list[str] | None = None,
         initial_imports: str | None = None, resolve: Callable[[str], str | None] = lambda text: text,
         platform: str | None = None) -> list[Found]:
    """Every config file found at ``locations``, lowest first, with its properties: a group of locations at a
    time, its plain files, then for each active profile (a later one higher) its profile files (None: profiles
    not known yet, no profile file nor profile document read).

    A group is ``;``-separated ``[optional:][file:]path`` locations, with the property that named it (None: the
    default one). Each file's ``spring.config.import`` comes right above it, ``initial_imports`` (set above the
    files) above them all; ``resolve`` replaces the placeholders of what a file imports. ``platform`` is the
    cloud platform a ``spring.config.activate.on-cloud-platform`` document must name (see ``cloud_platform``).
    """
    token = _PLATFORM.set(platform)
    try:
        return _load(locations, profiles, initial_imports, resolve)
    finally:
        _PLATFORM.reset(token)


def _load(locations: list[tuple[str, str | None]], profiles: list[str] | None, initial_imports: str | None,
          resolve: Callable[[str], str | None]) -> list[Found]:
    found: list[Found] = []
    seen: set[Path] = set()
    for group, origin in locations:
        for profile in [None, *(profiles or [])]:
            for location in (item for item in group.split(";") if item.strip()):
                try:
                    paths = _files(location, profile)
                except ConfigFileError as error:
                    raise ConfigFileError(f"{error} (property '{origin}')" if origin else str(error)) from None
                for path in paths:
                    values = read(path, profiles)
                    if profile is not None:
                        _refuse_profile_properties(values, f"{path}")
                    _add((path, values, False), found, seen, profiles, 0, resolve)
    for source in _imported(initial_imports, None, profiles):
        _add(source, found, seen, profiles, 0, resolve)
    return found


def _refuse_profile_properties(values: dict[str, str], where: str) -> None:
    """Boot's InvalidConfigDataPropertyException: a profile-specific file or document cannot choose profiles."""
    for key in values:
        name = _relaxed(key).split("[")[0]
        if name in _PROFILE_CHOICES:
            raise ConfigFileError(f"{where}: property '{key}' is invalid in a profile specific resource (the active "
                                  "profiles are chosen outside it)")


def _add(source: Found, found: list[Found], seen: set[Path], profiles: list[str] | None, depth: int,
         resolve: Callable[[str], str | None]) -> None:
    """A source, once, then what it imports above it (a comma list or a YAML list, placeholders resolved)."""
    resolved = source[0].resolve()
    if resolved in seen:
        return
    seen.add(resolved)
    found.append(source)
    if depth > 10:
        raise ConfigFileError(f"{source[0]}: spring.config.import nests more than 10 deep")
    if not source[2]:  # a config tree imports nothing
        value = ",".join(filter(None, map(resolve, _list(source[1], config_imports.IMPORT))))
        for imported in _imported(value, source[0].parent, profiles):
            _add(imported, found, seen, profiles, depth + 1, resolve)


def _imported(value: str | None, base: Path | None, profiles: list[str] | None) -> list[Found]:
    try:
        return config_imports.imports(value, base, lambda path: read(path, profiles), _files, profiles)
    except config_imports.ConfigImportError as error:
        raise ConfigFileError(str(error)) from None


def _files(location: str, profile: str | None = None) -> list[Path]:
    """The config files of one location (``application-<profile>`` ones for a profile, ``name-<profile>.ext``
    beside a file location, optional), lowest first. Where the system refuses to look (a directory the user
    cannot search) an optional location has none, as in Boot; any other is an error naming it."""
    text, optional = location.strip(), False
    if text.startswith("optional:"):
        text, optional = text[len("optional:"):], True
    if text.startswith("classpath:"):
        raise ConfigFileError(f"config location '{location}': a Python app has no classpath; use a file path")
    text = text.removeprefix("file:")
    if not text:
        return []
    try:
        return _located(text, location, optional, profile)
    except config_imports.ConfigImportError as error:
        raise ConfigFileError(str(error)) from None


def _located(text: str, location: str, optional: bool, profile: str | None) -> list[Path]:
    what = f"config location '{config_imports.shortened(location)}'"

    def present(path: Path, test: Callable[[Path], bool], skip: bool = optional) -> bool:
        return config_imports.present(path, test, skip, what)

    if text.endswith("/"):
        if text.endswith("*/"):
            parent = Path(text[:-2])
            try:
                directories = sorted(p for p in parent.iterdir() if present(p, Path.is_dir, True)) if present(
                    parent, Path.is_dir) else []
            except OSError as error:
                if optional and error.errno != errno.ENAMETOOLONG:
                    return []
                raise ConfigFileError(f"cannot list {what}: {error.strerror or error}") from None
        else:
            directories = [Path(text)]
            if not present(directories[0], Path.is_dir) and not optional:
                raise ConfigFileError(f"{what} does not exist (prefix it with 'optional:' if it may be missing)")
        stem = "application" if profile is None else f"application-{profile}"
        return [d / f"{stem}{ext}" for d in directories for ext in EXTENSIONS
                if present(d / f"{stem}{ext}", Path.is_file, True)]
    path = Path(text)
    if path.suffix not in EXTENSIONS:
        raise ConfigFileError(f"{what}: expected a directory ending with '/' or a {', '.join(EXTENSIONS)} file")
    if profile is not None:
        variant = path.with_name(f"{path.stem}-{profile}{path.suffix}")
        return [variant] if present(variant, Path.is_file, True) else []
    if not present(path, Path.is_file):
        if optional:
            return []
        raise ConfigFileError(f"config file '{location}' does not exist (prefix it with 'optional:' if it may "
                              "be missing)")
    return [path]


def read(path: Path, profiles: list[str] | None = None) -> dict[str, str]:
    """One file's properties (a document a profile activates only when it matches ``profiles``)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigFileError(f"cannot read config file {path}: {error.strerror or error}") from None
    if path.suffix == ".properties":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("iso-8859-1")  # what java.util.Properties reads
        return read_properties(text, str(path), profiles)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ConfigFileError(f"{path}:{line}: not UTF-8 text (YAML files are UTF-8)") from None
    return read_yaml(text, str(path), profiles)


def read_properties(text: str, name: str, profiles: list[str] | None = None) -> dict[str, str]:
    """A ``.properties`` file's properties (``#---`` documents merged as the active ``profiles`` say)."""
    return _merge(config_formats.properties_documents(text, name), profiles, name)


def read_yaml(text: str, name: str, profiles: list[str] | None = None) -> dict[str, str]:
    """A YAML file's properties, flattened as Spring Boot does (documents merged as the active ``profiles`` say)."""
    return _merge(config_formats.yaml_documents(text, name), profiles, name)


def cloud_platform(raw: Callable[[str], str | None], environ: Mapping[str, str]) -> str:
    """The cloud platform as Boot's CloudPlatform detects it (``spring.main.cloud-platform`` overrides), lower
    case: ``kubernetes``, ``cloud_foundry``, ``heroku``, ``sap``, ``nomad``, ``azure_app_service``, or ``none``."""
    named = raw("spring.main.cloud-platform")
    if named:
        return named.strip().lower()
    for platform, variables in _PLATFORMS:
        if all(environ.get(variable) for variable in variables):
            return platform
    return "none"


def _merge(documents: list[dict[str, str]], profiles: list[str] | None, name: str) -> dict[str, str]:
    """Later documents override earlier ones; one a profile activates (``spring.config.activate.on-profile``, or
    Boot 2's ``spring.profiles``) only when its expression matches the active ``profiles`` (None: not known yet,
    left out); one with ``spring.config.activate.on-cloud-platform`` only on that platform."""
    merged: dict[str, str] = {}
    includes: list[str] = []
    for number, document in enumerate(documents, 1):
        on_platform = _list(document, _ON_PLATFORM)
        if on_platform and (_PLATFORM.get() or "none") not in (p.lower() for p in on_platform):
            continue
        condition = ",".join(value for key in _CONDITIONS for value in _list(document, key)) or None
        if condition is not None:
            try:
                if profiles is None or not profiles_.matches(condition, profiles):
                    continue
            except profiles_.ProfileError as error:
                raise ConfigFileError(f"{name}: {error}") from None
            _refuse_profile_properties(document, f"{name}: document {number}")
        includes += _list(document, profiles_.INCLUDE)  # every document's includes add up, as in Boot
        merged.update(document)
    if includes:
        for key in [key for key in merged if _relaxed(key).split("[")[0] == _relaxed(profiles_.INCLUDE)]:
            del merged[key]
        merged[profiles_.INCLUDE] = ",".join(includes)
    return merged


def _list(values: dict[str, str], name: str) -> list[str]:
    """A list property of one file or document: a comma list, or YAML's ``name[0]``, ``name[1]``..."""
    relaxed, found = _relaxed(name), []
    for key, value in values.items():
        key = _relaxed(key)
        index = key[len(relaxed) + 1:-1]
        if key == relaxed:
            found.append((-1, value))
        elif key.startswith(relaxed + "[") and key.endswith("]") and index.isascii() and index.isdigit():
            found.append((int(index), value))
    return [item.strip() for _, value in sorted(found) for item in value.split(",") if item.strip()]


def _relaxed(name: str) -> str:
    return name.replace("-", "").replace("_", "").lower()
