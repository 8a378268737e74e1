"""The API reference renders in a real browser under Keel's CSP (headless Chromium)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest

from tests.test_serve import serve  # noqa: F401 - fixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt install chromium)"),
]


def render(url: str) -> str:
    """The DOM after the page's scripts ran."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=8000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    return result.stdout


def test_api_reference_renders_without_csp_violations(
    serve: tuple[subprocess.Popen[str], int],  # noqa: F811
) -> None:
    """Swagger UI's scripts are allowed by the CSP (no inline script): it renders the operations.

    Had the CSP refused the bundle or the start-up script, the page would hold only its
    empty container.
    """
    _process, port = serve
    dom = render(f"http://127.0.0.1:{port}/api/v1/docs")
    assert "opblock" in dom, "Swagger UI did not render the operations"
    assert "/readyz" in dom
