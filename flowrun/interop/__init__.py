"""Exchange with other tools' formats (ComfyUI)."""
