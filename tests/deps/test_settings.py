"""Per-deployment policy: the `deps` configuration (environment or keel.toml) overrides what
code declared, declares what code does not, and a bad value stops startup with one line
naming the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from typer.testing import CliRunner

from keel import create_app, deps
from keel.core.config import Config, DependencySettings
from keel.core.errors import StartupError
from keel.deps import spec
from tests.deps.upstream import Behaviour, Upstream


def _declare_up(base_url: str = "http://127.0.0.1:9") -> deps.Dependency:
    return deps.declare(
        "up-stream",
        base_url=base_url,
        timeouts=deps.Timeouts(connect=1.0, read=5.0, total=9.0),
        retry=deps.Retry(attempts=4),
        probe=deps.Probe("/health", failures=3),
        public=deps.Public("Uploads", target=99.9),
    )


def test_environment_variables_override_each_field_code_declared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`KEEL_DEPS__<NAME>__<GROUP>__<FIELD>` changes just that field; the rest of the group
    and of the declaration stays as code wrote it."""
    for name, value in {
        "KEEL_DEPS__UP_STREAM__TIMEOUTS__READ": "2.5",
        "KEEL_DEPS__UP_STREAM__RETRY__ATTEMPTS": "1",
        "KEEL_DEPS__UP_STREAM__BREAKER__FAILURES": "9",
        "KEEL_DEPS__UP_STREAM__CONCURRENCY__LIMIT": "3",
        "KEEL_DEPS__UP_STREAM__PROBE__PATH": "/hz",
        "KEEL_DEPS__UP_STREAM__PROBE_EVERY": "12",
        "KEEL_DEPS__UP_STREAM__PUBLIC_NAME": "Uploads (EU)",
        "KEEL_DEPS__UP_STREAM__SLA_TARGET": "99.5",
        "KEEL_DEPS__UP_STREAM__SLA_WINDOW_DAYS": "90",
    }.items():
        monkeypatch.setenv(name, value)
    dep = _declare_up()
    assert dep.timeouts == deps.Timeouts(connect=1.0, read=2.5, total=9.0)
    assert dep.retry.attempts == 1 and dep.retry.budget == deps.Retry().budget
    assert dep.breaker.failures == 9 and dep.concurrency.limit == 3
    assert dep.probe == deps.Probe("/hz", failures=3) and dep.probe_every == 12.0
    assert dep.public == deps.Public("Uploads (EU)", target=99.5, window_days=90)


def test_a_bad_environment_value_fails_the_declaration_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A negative timeout or an unknown field is refused with the variable's name."""
    monkeypatch.setenv("KEEL_DEPS__UP_STREAM__TIMEOUTS__READ", "-1")
    with pytest.raises(ValueError, match=r"KEEL_DEPS__UP_STREAM__TIMEOUTS__READ: .*greater"):
        _declare_up()
    monkeypatch.delenv("KEEL_DEPS__UP_STREAM__TIMEOUTS__READ")
    monkeypatch.setenv("KEEL_DEPS__UP_STREAM__TIMEOUT", "3")
    with pytest.raises(ValueError, match="KEEL_DEPS__UP_STREAM__TIMEOUT: Extra inputs"):
        _declare_up()
    assert "up-stream" not in deps.declared()


def test_the_configuration_applies_to_declarations_before_and_after_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Settings from keel.toml reach a dependency declared earlier and one declared later,
    declare a dependency only configuration names, and are dropped again with `None`."""
    toml = tmp_path / "keel.toml"
    toml.write_text(
        "[deps.up-stream.breaker]\nopen_for = 42\n"
        "[deps.up-stream]\npublic = false\n"
        '[deps.extra]\nbase_url = "https://extra.example"\nprobe_every = 5\n'
        "[deps.extra.probe]\npath = '/ping'\n"
    )
    monkeypatch.setenv("KEEL_CONFIG_FILE", str(toml))
    _declare_up()
    config = Config()
    assert set(config.deps) == {"up_stream", "extra"}
    spec.use_settings(config.deps)
    assert deps.dependency("up-stream").breaker.open_for == 42.0
    assert deps.dependency("up-stream").public is None, "public = false hides it"
    extra = deps.dependency("extra")
    assert extra.base_url == "https://extra.example" and extra.probe == deps.Probe("/ping")
    deps.declare("later", base_url="http://127.0.0.1:9")
    assert deps.dependency("later").timeouts == deps.Timeouts()
    spec.use_settings(None)
    assert "extra" not in deps.declared()
    assert deps.dependency("up-stream").breaker.open_for == deps.Breaker().open_for


def test_settings_naming_an_undeclared_dependency_need_a_base_url() -> None:
    """Settings for a name code does not declare, without a base URL, are refused and the
    previous settings stay in force."""
    deps.declare("known", base_url="http://127.0.0.1:9", probe=deps.Probe())
    spec.use_settings({"known": DependencySettings(sla_target=99.0)})
    with pytest.raises(ValueError, match=r"deps\.ghost: .*needs a base_url"):
        spec.use_settings({"ghost": DependencySettings(retry={"attempts": 2})})  # type: ignore[arg-type]
    assert spec.settings_for("known") == DependencySettings(sla_target=99.0)


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("KEEL_DEPS__TOPMEDIAI__TIMEOUTS__READ", "-1", "deps.topmediai.timeouts.read"),
        ("KEEL_DEPS__TOPMEDIAI__SLA_TARGET", "101", "deps.topmediai.sla_target"),
        ("KEEL_DEPS__TOPMEDIAI__RETRY__ATTEMPTS", "many", "deps.topmediai.retry.attempts"),
        ("KEEL_DEPS__TOPMEDIAI__BASE_URL", "ftp://x", "deps.topmediai.base_url"),
        ("KEEL_DEPS__TOPMEDIAI__NONSENSE", "1", "deps.topmediai.nonsense"),
        ("KEEL_DEPS__TOPMEDIAI__PROBE__PATH", "healthz", "deps.topmediai.probe.path"),
    ],
)
def test_a_bad_value_stops_every_command_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    """`keel config show` (like serve) exits 2 with one error line naming the field and a
    hint naming the variable."""
    from keel.cli import app

    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"keel: error: invalid configuration: {field}: ")
    assert variable in lines[1]


@pytest.mark.parametrize(
    "command", [("config", "show"), ("db", "upgrade"), ("db", "current"), ("doctor",)]
)
def test_settings_the_declarations_refuse_stop_every_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """A setting only applying it can refuse (a dependency no code declares, without a base
    URL) stops each command, not only serve and `keel deps`, with one line naming it, exit
    2, before touching the database."""
    from keel.app import builtin_modules
    from keel.cli import app

    builtin_modules()  # as `keel`'s main() does: the modules register their hooks
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KEEL_DEPS__GHOST__SLA_TARGET", "99")
    result = CliRunner().invoke(app, list(command))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("keel: error: invalid configuration: deps.ghost: "), lines
    assert len(lines) == 2 and "KEEL_DEPS" in lines[1]
    assert not (tmp_path / "data").exists(), "nothing was created"


async def test_a_kernel_applies_its_settings_at_start_and_refuses_bad_ones(
    make_config: Callable[..., Config], upstream: Upstream
) -> None:
    """Started with settings, the kernel's clients use them (one attempt instead of four), and
    still after its shutdown hooks ran (an in-process worker may drain jobs calling the
    dependency then); settings naming an undeclared dependency without a base URL stop the
    start."""
    _declare_up(upstream.url)
    config = make_config(deps={"up_stream": {"retry": {"attempts": 1}}})
    application = create_app(config, configure_logs=False)
    async with LifespanManager(application):
        upstream.default = Behaviour(status=503)
        response = await deps.http("up-stream").get("/x")
        assert response.status_code == 503 and len(upstream.hits) == 1
    assert deps.dependency("up-stream").retry.attempts == 1, "still the deployment's policy"
    bad = create_app(make_config(deps={"ghost": {"sla_target": 99}}), configure_logs=False)
    with pytest.raises(StartupError, match=r"deps\.ghost"):
        async with LifespanManager(bad):
            pass


def test_settings_of_keel_components_are_limited_to_how_they_show() -> None:
    """Keel's own components take only public, public_name and the SLA; another field or an
    unknown keel_ name is refused naming it."""
    spec.use_settings({"keel_api": DependencySettings(sla_target=99.0, public=True)})
    with pytest.raises(ValueError, match=r"deps\.keel_api\.base_url: Keel's own components"):
        spec.use_settings({"keel_api": DependencySettings(base_url="http://x.example")})
    with pytest.raises(ValueError, match=r"deps\.keel_apii: Keel's own components are keel_api"):
        spec.use_settings({"keel_apii": DependencySettings(sla_target=99.0)})
    assert spec.settings_for("keel.api") == DependencySettings(sla_target=99.0, public=True)


async def test_serve_checks_the_settings_before_binding(
    make_config: Callable[..., Config],
) -> None:
    """`keel serve`'s preflight refuses settings naming an undeclared dependency without a
    base URL as a one-line StartupError, before any port is bound."""
    from keel.cli import _preflight

    with pytest.raises(StartupError, match=r"deps\.ghost: no dependency 'ghost'") as caught:
        await _preflight(make_config(deps={"ghost": {"sla_target": 99}}))
    assert "\n" not in caught.value.detail and caught.value.hint
    await _preflight(make_config(deps={"keel_api": {"sla_target": 99}}))


@pytest.mark.parametrize("name", ["keel.api", "keel.database", "keel_workers", "keel-x"])
def test_names_of_keel_components_are_reserved(name: str) -> None:
    """Code cannot declare a dependency under a name starting `keel.`, `keel_` or `keel-`
    (it would share a component's records and slot claims); `keelson` is fine."""
    with pytest.raises(ValueError, match="reserved"):
        deps.declare(name, base_url="http://127.0.0.1:9")
    assert name not in deps.declared()
    assert deps.declare("keelson", base_url="http://127.0.0.1:9").name == "keelson"


async def test_a_dependency_only_settings_declare_answers_to_its_spelled_name() -> None:
    """`[deps.image-gen]` declares `image_gen`, which `dependency` and `http` also find as
    `image-gen` (one client); code declaring `image-gen` later replaces it, leaving one."""
    config = Config(deps={"image-gen": {"base_url": "https://img.example", "probe_every": 9}})
    spec.use_settings(config.deps)
    assert deps.dependency("image-gen").name == "image_gen"
    assert deps.http("image-gen") is deps.http("image_gen")
    deps.declare("image-gen", base_url="http://127.0.0.1:9", probe=deps.Probe())
    found = [name for name in deps.declared() if spec.settings_key(name) == "image_gen"]
    assert found == ["image-gen"]
    dep = deps.dependency("image-gen")
    assert dep.base_url == "https://img.example" and dep.probe_every == 9.0


@pytest.mark.parametrize("path", ["healthz", "", "ftp://x.example/h", "/a b"])
def test_a_probe_path_is_absolute_or_a_url(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe path neither starting with / nor an http(s) URL (`healthz` would make
    `https://api.example.comhealthz`) is refused in code and in a deployment's variables."""
    with pytest.raises(ValueError, match=r"Probe\.path"):
        deps.Probe(path)
    monkeypatch.setenv("KEEL_DEPS__UP_STREAM__PROBE__PATH", path)
    with pytest.raises(ValueError, match="KEEL_DEPS__UP_STREAM__PROBE__PATH"):
        _declare_up()
    assert deps.Probe("/healthz").path == "/healthz"
    assert deps.Probe("https://status.example/h").path == "https://status.example/h"


def test_the_configuration_masks_credentials_in_dependency_urls() -> None:
    """`Config.redacted()` and `repr(config)` mask the password of a dependency's base URL
    and the token of an absolute probe URL."""
    config = Config(
        deps={
            "paid": {
                "base_url": "https://bot:s3cret@api.example/v1",
                "probe": {"path": "https://status.example/h?token=tok123"},
            }
        }
    )
    shown = config.redacted()["deps"]["paid"]
    assert shown["base_url"] == "https://bot:***@api.example/v1"
    assert shown["probe"]["path"] == "https://status.example/h?token=***"
    for text in (str(config.redacted()), repr(config), str(config)):
        assert "s3cret" not in text and "tok123" not in text, text
