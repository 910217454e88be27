"""`studio reward train | eval | score`: the CTR reward model from the command line.

A log is the ``events.db`` of a run folder; the folder also holds the creatives (``catalogue.json`` or
``creatives/<creative_id>.png``) and the audience clustering (``audience/``), see ``studio.learning.log_dataset.read_catalogue``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from studio.cli.output import emit
from studio.core.db import is_postgres_url
from studio.core.errors import InputError

TRAINING_NAME = "training.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("reward", help="train, evaluate and apply the CTR reward model")
    commands = parser.add_subparsers(dest="reward_command", metavar="ACTION", required=True)

    train = commands.add_parser("train", help="train a reward model on an event log")
    train.add_argument("--log", required=True, help="events.db of a run folder (studio simulate writes one), or with "
                       "--cache a serving event log: a SQLite path or a postgresql:// URL")
    train.add_argument("--cache", default=None, help="the creative cache `studio serve` served from (folder or "
                       "postgresql:// URL): its creatives are the log's catalogue")
    train.add_argument("--blobs", default=None, help="where the cache's PNGs are (with a PostgreSQL --cache)")
    train.add_argument("--audience", default=None, help="the audience folder the server used (default: beside a "
                       "--cache folder)")
    train.add_argument("--out", default=None, help="model folder to write (default: <log folder>/reward)")
    train.add_argument("--image-encoder", default="embedded", help="'embedded' or a transformers id / folder")
    train.add_argument("--text-encoder", default="embedded", help="'embedded' or a transformers id / folder")
    train.add_argument("--max-epochs", type=int, default=600)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--json", action="store_true", help="print the report as JSON")
    train.set_defaults(func=run_reward_train)

    evaluate = commands.add_parser("eval", help="evaluate a reward model on the test creatives of a log (never seen in training)")
    evaluate.add_argument("--log", required=True, help="events.db of a run folder")
    evaluate.add_argument("--model", required=True, help="reward model folder, or 'reward-mini'")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.set_defaults(func=run_reward_eval)

    score = commands.add_parser("score", help="predict the CTR of creative images for an audience group")
    score.add_argument("images", nargs="+", help="creative images (PNG); a corrupt one is reported, not fatal")
    score.add_argument("--model", required=True, help="reward model folder, or 'reward-mini'")
    score.add_argument("--prompt", default=None, help="the creatives' prompt (default: the PNG's provenance recipe)")
    score.add_argument("--group", default=None, help="audience group id (default: every group the model knows)")
    score.add_argument("--category", default=None,
                       help="product category or kind (default: from the parent folder name, e.g. bottle-0)")
    score.add_argument("--json", action="store_true", help="print the scores as JSON")
    score.set_defaults(func=run_reward_score)


def run_reward_train(args: argparse.Namespace) -> int:
    import torch

    from reward.evaluation import evaluate, uniform_rows
    from reward.model import RewardConfig
    from reward.training import RewardTrainer, TrainingConfig
    from studio.core.atomic import write_file
    from studio.learning.log_dataset import load_log_dataset

    torch.set_num_threads(1)  # one full-batch step of small ops per epoch: extra threads only contend
    served = args.cache is not None
    if is_postgres_url(args.log) and not (served and args.out):
        raise InputError("a postgresql:// --log is a serving log: pass --cache (the creative cache it served from) "
                         "and --out (where to write the model)")
    out = Path(args.out) if args.out else Path(args.log).parent / "reward"
    model_config = RewardConfig(image_encoder=args.image_encoder, text_encoder=args.text_encoder)
    config = TrainingConfig(max_epochs=args.max_epochs, seed=args.seed, model=model_config, progress=not args.json)
    if served:
        from studio.jobs.serving_log import load_serving_dataset

        if args.audience is None and is_postgres_url(args.cache):
            raise InputError("with a PostgreSQL --cache, pass --audience (the audience folder the server used)")
        audience = args.audience or Path(args.cache).parent / "audience"
        dataset = load_serving_dataset(args.log, args.cache, audience, blobs=args.blobs,
                                       image_size=model_config.image_size)
    else:
        dataset = load_log_dataset(args.log, image_size=model_config.image_size)
    trainer = RewardTrainer(config).fit(dataset)
    trainer.model_.save_pretrained(out)
    split = trainer.split_
    test = evaluate(trainer.model_, dataset, uniform_rows(split.impressions(dataset.impressions, "test")),
                    train_impressions=split.impressions(dataset.impressions, "train"))
    report = {"model": str(out), "epochs": trainer.n_epochs_, "best_epoch": trainer.best_epoch_,
              "prior_alpha": trainer.prior_.alpha, "prior_beta": trainer.prior_.beta,
              **{f"test_{k}": v for k, v in test.items()}}
    training = {"log": _log_name(args.log), "seed": config.seed, "creatives": split.to_dict(),
                "history": trainer.history_, "report": report}
    write_file(out / TRAINING_NAME, lambda path: path.write_text(json.dumps(training, indent=2) + "\n"))
    emit(report, args.json)
    return 0


def _log_name(log: str) -> str:
    """What training.json records as the log: the resolved path, or the URL without its password."""
    if not is_postgres_url(log):
        return str(Path(log).resolve())
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(log)
    host = parts.hostname or ""
    netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def run_reward_eval(args: argparse.Namespace) -> int:
    from reward.evaluation import evaluate, uniform_rows
    from reward.model import RewardModel, resolve_model_folder
    from reward.training import CreativeSplit
    from studio.learning.log_dataset import load_log_dataset
    from studio.sim.oracle import SimulatorOracle

    model = RewardModel.from_pretrained(args.model)
    dataset = load_log_dataset(args.log, image_size=model.config.image_size)
    impressions, split, train = dataset.impressions, "all", None
    # On the log the model was trained on: its test creatives (never seen in training), with the lookup-table
    # baseline fitted on its training creatives. A different log is all unseen.
    training = resolve_model_folder(args.model) / TRAINING_NAME
    if training.is_file():
        info = json.loads(training.read_text())
        if info.get("log") == str(Path(args.log).resolve()) and "creatives" in info:
            creatives = info["creatives"]
            parts = CreativeSplit(*(tuple(creatives[k]) for k in ("train", "validation", "test")))
            impressions, split = parts.impressions(dataset.impressions, "test"), "test creatives"
            train = parts.impressions(dataset.impressions, "train")
    oracle = SimulatorOracle.from_run(Path(args.log).parent)
    report = {"split": split, **evaluate(model, dataset, uniform_rows(impressions), oracle, train)}
    emit(report, args.json)
    return 0


def run_reward_score(args: argparse.Namespace) -> int:
    import torch

    from reward.data import load_pixels
    from reward.model import RewardModel
    from studio.core import vocabulary
    from studio.learning.log_dataset import recipe_prompt

    torch.set_num_threads(1)  # small per-batch ops: a second thread costs more than it gives (benchmarks/reward_model.py)
    model = RewardModel.from_pretrained(args.model)
    groups = [args.group] if args.group is not None else list(model.config.group_ids)
    model.group_vectors(groups)  # unknown group -> a clear error before any work
    pixels, errors = load_pixels(args.images, size=model.input_size)
    results = []
    good = [i for i, error in enumerate(errors) if error is None]
    if not good:  # a bad image among good ones is reported in the results; with no good one there is nothing to do
        raise InputError(f"none of the {len(errors)} images can be read, e.g. {errors[0]}")
    prompts = [args.prompt if args.prompt is not None else recipe_prompt(Path(args.images[i])) for i in good]
    categories = [args.category or Path(args.images[i]).parent.name.rsplit("-", 1)[0] for i in good]
    categories = [vocabulary.CATEGORIES.get(c, c) for c in categories]
    scores = {}
    for group in groups:
        ctr = model.predict_ctr(pixels[good], prompts, [group] * len(good), categories) if good else []
        for i, value in zip(good, ctr):
            scores.setdefault(i, {})[group] = float(value)
    for i, image in enumerate(args.images):
        if errors[i] is None:
            position = good.index(i)
            results.append({"image": image, "prompt": prompts[position], "category": categories[position],
                            "ctr": scores[i]})
        else:
            results.append({"image": image, "error": errors[i]})
    emit(results, args.json, (
        f"{row['image']}: error: {row['error']}" if "error" in row
        else f"{row['image']}: " + "  ".join(f"group {g}: {v:.4f}" for g, v in row["ctr"].items())
        for row in results))
    return 0
