import json
import os
import sys
import time

sys.path.insert(0, "src")
import torch

from dartsnas.data.images import ImageData
from dartsnas.loops.search import SearchConfig, _search_step, _State

out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "results": []}
dev = torch.device("cuda")
torch.backends.cudnn.benchmark = True
n = 1024
data = ImageData(
    "synthetic",
    torch.randint(0, 255, (n, 3, 32, 32), dtype=torch.uint8, device=dev),
    torch.randint(0, 10, (n,), device=dev),
    torch.zeros(1, 3, 32, 32, dtype=torch.uint8, device=dev),
    torch.zeros(1, dtype=torch.long, device=dev),
    (0.5,) * 3,
    (0.25,) * 3,
    10,
)
crit = torch.nn.CrossEntropyLoss()
for order, steps in ((1, 20), (2, 8)):
    cfg = SearchConfig(dataset="builtin", order=order, device="cuda")
    st = _State(cfg, data, dev)
    x = torch.randn(64, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (64,), device=dev)
    xv = torch.randn(64, 3, 32, 32, device=dev)
    yv = torch.randint(0, 10, (64,), device=dev)
    for _ in range(3):
        _search_step(st, crit, x, y, xv, yv, 0.025)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        _search_step(st, crit, x, y, xv, yv, 0.025)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    r = {
        "order": order,
        "steps": steps,
        "steps_per_s": steps / dt,
        "images_per_s": 128 * steps / dt,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9,
        "settings": "C16 L8 batch 64+64 fp32 eager",
    }
    out["results"].append(r)
    print(json.dumps(r), flush=True)
os.makedirs(os.environ.get("OUT", "/tmp"), exist_ok=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "search_eager.json"), "w"), indent=1)
