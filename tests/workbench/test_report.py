"""`workbench report --html`: one self-contained page, checked by parsing and, where Debian's
chromium is installed, by loading it headless (no console errors, a screenshot with the table)."""

import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from workbench.cli import app

from .test_agent import api_key, small  # noqa: F401  (fixtures)
from .test_compare import runs  # noqa: F401  (fixture)


class Resources(HTMLParser):
    """Every URL the page would fetch (src / href), and the text of its tables."""

    def __init__(self):
        super().__init__()
        self.urls, self.cells, self._in_cell = [], [], False

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        self._in_cell = tag in ("td", "th")

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data.strip())


def test_report_is_self_contained_and_holds_the_figures(runs, tmp_path):  # noqa: F811
    page = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--html", str(page), "--out", str(runs)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    parser = Resources()
    parser.feed(text)
    assert parser.urls == [] and "<script" not in text  # nothing to fetch, nothing to run
    assert ["alpha", "(all)", "3", "0", "2", "0.67"] == parser.cells[16:22]  # alpha's overall row
    assert "<svg id='rounds-chart'" in text and text.count("<polyline") == 2
    assert text.count("<h3") == 6 and "return 42" in text  # every attempt with its patch


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(runs, tmp_path):  # noqa: F811
    page, shot = tmp_path / "report.html", tmp_path / "report.png"
    assert CliRunner().invoke(app, ["report", "--html", str(page), "--out", str(runs)]).exit_code == 0
    done = subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           f"--screenshot={shot}", "--window-size=1400,900", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CONSOLE" not in done.stderr and "Uncaught" not in done.stderr  # no console errors
    assert shot.stat().st_size > 20_000  # a page with a table, not a blank one (blank: ~5 KB)
    dom = subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "id=\"comparison\"" in dom and "alpha" in dom
