"""After rendering: CSS inlined into the HTML, and a text part made from it."""

from __future__ import annotations

import re

import css_inline
from inscriptis import Inscriptis
from inscriptis.css_profiles import STRICT_CSS_PROFILE
from inscriptis.model.config import ParserConfig
from lxml.etree import ParserError
from lxml.html import document_fromstring

from templates_app.errors import TemplateRenderError

# Remote stylesheets are never fetched: a template must not make the server
# request URLs. @media rules stay in a <style> (responsive layouts, MJML).
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True, keep_link_tags=True)
_HAS_STYLE = re.compile(r"<style[\s>]", re.IGNORECASE)


def inline_css(html: str) -> str:
    """Move <style> rules into style attributes, for mail clients that drop <style>."""
    if not _HAS_STYLE.search(html):
        return html  # nothing to inline: leave the author's markup as it is
    try:
        return _INLINER.inline(html)
    except (css_inline.InlineError, ValueError) as error:
        raise TemplateRenderError(f"html: CSS could not be inlined: {error}", fields={"html": [str(error)]}) from None


_TEXT_CONFIG = ParserConfig(css=STRICT_CSS_PROFILE)
_HIDDEN = re.compile(r"display\s*:\s*none|mso-hide\s*:\s*all", re.IGNORECASE)


def _flatten_layout_table(table) -> None:
    """Email HTML is laid out with tables (MJML's always): read a table without
    header cells as paragraphs, not as a grid. Tables with <th> stay tables."""
    rows = table.xpath("./tr | ./thead/tr | ./tbody/tr | ./tfoot/tr")
    if any(cell.tag == "th" for row in rows for cell in row):
        return
    for row in rows:
        for cell in row:
            if cell.tag == "td":
                cell.tag = "p"  # a block with a blank line around it
        row.tag = "div"
    for section in table.xpath("./thead | ./tbody | ./tfoot"):
        section.tag = "div"
    table.tag = "div"


def html_to_text(html: str) -> str:
    """A readable text part from rendered HTML (inscriptis): headings and
    paragraphs as blocks, lists with bullets, links as "label (URL)", hidden
    preheaders left out, no alignment padding."""
    if not html.strip():
        return ""
    try:
        tree = document_fromstring(html)
    except ParserError:
        return ""
    for table in list(tree.iter("table")):
        _flatten_layout_table(table)
    for element in list(tree.iter()):
        if not isinstance(element.tag, str):
            continue
        if _HIDDEN.search(element.attrib.get("style", "")):
            element.drop_tree()
            continue
        for attribute in ("style", "align", "valign"):
            element.attrib.pop(attribute, None)
        if element.tag == "a":
            href = (element.attrib.get("href") or "").strip()
            shown = href[7:] if href.lower().startswith("mailto:") else href
            if shown and not href.startswith("#") and shown != element.text_content().strip():
                element.tail = f" ({shown})" + (element.tail or "")
    text = Inscriptis(tree, _TEXT_CONFIG).get_text()
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
