import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny networks: one thread is faster than two and immune to a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_rgb_models(root, classes):
    """models/har layout with the RGB-only pipeline's two files (tiny, untrained)."""
    import torch

    from components.har.config import StreamNetConfig, TemporalConfig
    from components.har.streams import StreamNet
    from components.har.temporal import LstrHead

    (root / "teacher").mkdir(parents=True)
    (root / "heads").mkdir()
    scfg = StreamNetConfig(widths=[8])
    net = StreamNet(3, len(classes), scfg.widths)
    torch.save({"state_dict": net.state_dict(), "in_channels": 3, "classes": classes,
                "config": scfg.model_dump(), "kind": "rgb"}, root / "teacher" / "rgb.pt")
    tcfg = TemporalConfig(d_model=8, heads=2, long_memory=2, short_window=1, latent_queries=2)
    head = LstrHead(8, len(classes), tcfg)
    meta = {"classes": classes, "clip_len": 6, "height": 32, "width": 32, "fps": 30, "frames_per_clip": 12}
    torch.save({"state_dict": head.state_dict(), "in_dim": 8, "config": tcfg.model_dump(), "meta": meta},
               root / "heads" / "rgb.pt")
    return root
