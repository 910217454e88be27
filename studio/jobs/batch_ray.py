"""The batch job on Ray Data: the same work items, made by a pool of actors that each load the models once.

    ray.data.from_items(items).map_batches(ItemWorker, concurrency=workers, num_gpus=1 if GPUs else 0, batch_size=1)

Each actor runs `ItemMaker` (the in-process code), so a work item's bytes are the same wherever it runs. The driver
alone writes the cache: actors return PNG bytes and scores, the driver commits each item whole as it arrives. Ray is
an optional extra (`pip install 'creative-studio[ray]'`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict

from studio.core.errors import InputError
from studio.jobs.work import BatchConfig, ItemMaker, ItemResult, Made, Product, Versions, WorkItem
from studio.jobs.cache import CacheKey
from studio.jobs.pipeline import load_models


def _item_to_json(item: WorkItem) -> str:
    return json.dumps({"unit_id": item.unit_id, "product": asdict(item.product), "placement": item.placement,
                       "groups": item.groups})


def _item_from_json(text: str) -> WorkItem:
    data = json.loads(text)
    return WorkItem(data["unit_id"], Product(**data["product"]), data["placement"], data["groups"])


class ItemWorker:
    """A Ray Data actor: loads the three models in `__init__`, then makes one work item per call."""

    def __init__(self, config: dict, version: dict, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # the same thread count as the in-process job: the same floating-point sums
        config = BatchConfig(**config)
        models = load_models(config.generator, config.prompt_model, config.reward_model, device=config.device)
        self.maker = ItemMaker(config, models, Versions(**version))

    def __call__(self, batch: dict) -> dict:
        columns: dict[str, list] = {name: [] for name in ("unit_id", "size", "product_id", "placement", "group_id",
                                                          "prompt", "generator_version", "png", "ctr", "rank", "status",
                                                          "error")}

        def add(result: ItemResult, size: int, made: Made | None) -> None:
            columns["unit_id"].append(result.unit_id)
            columns["size"].append(size)
            columns["product_id"].append(result.product_id)
            columns["placement"].append(result.placement)
            columns["group_id"].append(made.key.group_id if made else -1)
            columns["prompt"].append(made.key.prompt if made else "")
            # per creative: with personal conditions it holds the conditions of the creative's group
            columns["generator_version"].append(made.key.generator_version if made else "")
            columns["png"].append(made.png if made else b"")
            columns["ctr"].append(made.predicted_ctr if made else 0.0)
            columns["rank"].append(made.rank if made else 0)
            columns["status"].append(made.status if made else "")
            columns["error"].append(result.error or "")

        for text in batch["item"]:
            result = self.maker.paint(_item_from_json(str(text)))()
            if result.error is not None or not result.creatives:
                add(result, 1, None)
            for made in result.creatives:
                add(result, len(result.creatives), made)
        return columns


def run_on_ray(config: BatchConfig, items: list[WorkItem], version: Versions) -> Iterator[ItemResult]:
    """Make `items` on Ray (a local Ray, or the cluster at `config.ray_address`); yields each item when whole."""
    if not items:
        return
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install 'creative-studio[ray]'") from None
    if not ray.is_initialized():
        if config.ray_address:
            ray.init(address=config.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=config.workers, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the job shows one bar of its own
    gpus = ray.cluster_resources().get("GPU", 0)
    import torch

    threads = torch.get_num_threads()  # the driver's: a local Ray run then sums floats as the in-process job does
    worker_config = {**asdict(config), "progress": False}
    dataset = ray.data.from_items([{"item": _item_to_json(item)} for item in items],
                                  override_num_blocks=len(items))
    dataset = dataset.map_batches(
        ItemWorker, fn_constructor_kwargs={"config": worker_config, "version": asdict(version), "threads": threads},
        concurrency=config.workers, num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1, batch_size=1,
    )
    pending: dict[str, ItemResult] = {}
    for batch in dataset.iter_rows():
        unit_id = batch["unit_id"]
        result = pending.setdefault(unit_id, ItemResult(unit_id, batch["product_id"], batch["placement"]))
        if batch["error"]:
            result.error = batch["error"]
        else:
            key = CacheKey(batch["product_id"], int(batch["group_id"]), batch["placement"], batch["prompt"],
                           batch["generator_version"], version.reward)
            result.creatives.append(Made(bytes(batch["png"]), key, float(batch["ctr"]), int(batch["rank"]),
                                         batch["status"]))
        if result.error is not None or len(result.creatives) == int(batch["size"]):
            yield pending.pop(unit_id)
