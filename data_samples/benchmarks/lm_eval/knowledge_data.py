"""The items of world_knowledge.yaml, found from this file, not from the working directory."""

from pathlib import Path

ITEMS = Path(__file__).resolve().parent.parent / "knowledge_mc.jsonl"


def load_knowledge_mc(**metadata):
    """lm-eval's custom_dataset hook: it passes the task's metadata, which is not needed."""
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(ITEMS)})
