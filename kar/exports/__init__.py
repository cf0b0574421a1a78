"""Knowledge vectors in the formats other CTR libraries read (see docs/exports.md)."""

from kar.exports.formats import FORMATS, export_knowledge, export_project

__all__ = ["FORMATS", "export_knowledge", "export_project"]
