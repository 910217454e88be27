"""`studio loop`: the closed loop (clicks -> reward model -> prompt model and generator -> new arms) on the simulator,
against the bandit over the fixed round-0 pool and the loop without generator fine-tuning."""

from __future__ import annotations

import argparse

from studio.cli import arguments
from studio.cli.output import emit


def register(subparsers) -> None:
    loop = subparsers.add_parser(
        "loop",
        help="run the closed loop on the simulator: serve, retrain the reward model, fine-tune prompts and generator",
        description="Each round: serve the bandit on simulated traffic and log it, retrain the reward model on every "
                    "round so far, let the prompt model propose and studio-mini paint new creatives per audience "
                    "group, rank them with the reward model, fine-tune the prompt model (weighted SFT) and the "
                    "generator (LoRA) on the best, and give the bandit the new arms. Reports the simulator's true "
                    "CTR per round against two baselines run on the same traffic (three with --refresh-arm).",
    )
    loop.add_argument("--rounds", type=arguments.whole(1, 20), default=3, help="rounds after round 0 (default 3)")
    loop.add_argument("--seed", type=arguments.seed, default=0)
    loop.add_argument("--out", default="out/loop", help="output folder (must be new or empty)")
    loop.add_argument("--impressions", type=arguments.whole(100, 2_000_000), default=40_000,
                      help="requests served per round (default 40000)")
    loop.add_argument("--users", type=arguments.whole(50, 1_000_000), default=5_000,
                      help="simulated users (default 5000)")
    loop.add_argument("--groups", type=arguments.whole(1, 16), default=None,
                      help="audience groups (default: chosen by silhouette)")
    loop.add_argument("--candidates", type=arguments.whole(1, 64), default=12,
                      help="prompts proposed and painted per group each round (default 12)")
    loop.add_argument("--top-k", type=arguments.whole(1, 64), default=2,
                      help="new arms per group each round (default 2)")
    loop.add_argument("--initial", type=arguments.whole(1, 64), default=3,
                      help="round-0 creatives per group (default 3)")
    loop.add_argument("--steps", type=arguments.whole(1, 200), default=15,
                      help="denoising steps per creative (default 15)")
    loop.add_argument("--guidance", type=arguments.number(0, 50), default=7.5,
                      help="classifier-free guidance of every creative the loop paints (default 7.5, not studio-mini's "
                           "own 1.5: at 1.5 the prompts barely steer the backdrop; docs/loop.md)")
    loop.add_argument("--reward-epochs", type=arguments.whole(1, 10_000), default=300,
                      help="epoch cap of each reward-model retrain (default 300)")
    loop.add_argument("--prompt-steps", type=arguments.whole(1, 10_000), default=40,
                      help="weighted-SFT steps of the prompt model per round (default 40)")
    loop.add_argument("--lora-steps", type=arguments.whole(1, 10_000), default=100,
                      help="LoRA steps of the generator per round (default 100)")
    loop.add_argument("--lora-per-group", action="store_true",
                      help="one generator LoRA per audience group, on that group's examples (default: one LoRA)")
    loop.add_argument("--lora-examples", choices=("selected", "clicked"), default="selected",
                      help="what the generator LoRA learns from: every creative the ranker selected so far "
                           "(default), or every logged creative with an above-average CTR in a group")
    loop.add_argument("--draft-steps", type=arguments.whole(0, 10_000), default=30,
                      help="after the LoRA fits its examples, DRaFT-1 steps through the ranker's predicted CTR "
                           "(default 30; 0: none; docs/loop.md)")
    loop.add_argument("--draft-lr", type=arguments.number(1e-7, 1.0), default=3e-4,
                      help="learning rate of the DRaFT steps (default 3e-4)")
    loop.add_argument("--refresh-arm", action="store_true",
                      help="also run the 'refresh' ablation: new arms each round drawn at random from the base prompt "
                           "model's proposals, nothing learned (separates what learning adds from new arms as such)")
    live = loop.add_argument_group("against a live server (docs/loop.md, 'Against a live server')")
    live.add_argument("--prepare-server", metavar="DIR", default=None,
                      help="write DIR (audience/, an empty cache/, server.json) for a studio serve of this world, print "
                           "its command and exit")
    live.add_argument("--serve-url", default=None,
                      help="serve the 'loop' arm through the studio serve at this loopback URL (token: "
                           "$STUDIO_API_TOKEN); the baselines stay in-process")
    live.add_argument("--serve-dir", default=None, help="the folder --prepare-server wrote, which the server serves")
    live.add_argument("--serve-db", default=None,
                      help="the server's event log when it is not <serve-dir>/events.db (SQLite file or postgresql:// URL)")
    live.add_argument("--serve-seconds", type=arguments.number(1, 86_400), default=600.0,
                      help="time limit of each round's requests to the server (default 600)")
    live.add_argument("--concurrency", type=arguments.whole(1, 256), default=8,
                      help="requests to the server in flight (default 8)")
    loop.add_argument("--resume", metavar="DIR", default=None,
                      help="go on with the killed run in DIR from the last round every arm finished, with the "
                           "settings it was started with (the other settings are not read)")
    loop.add_argument("--json", action="store_true", help="print the full report as JSON on stdout")
    loop.set_defaults(func=run_loop_command)


def run_loop_command(args: argparse.Namespace) -> int:
    import os

    from studio.jobs.loop import DEFAULT_ARMS, LoopConfig, prepare_server, resume_loop, run_loop

    if args.resume:
        report = resume_loop(args.resume, progress=not args.json)
        emit(report.to_dict(), args.json, _summary(report))
        return 0
    config = LoopConfig(rounds=args.rounds, seed=args.seed, impressions=args.impressions, users=args.users,
                        groups=args.groups, candidates_per_group=args.candidates, top_k=args.top_k,
                        initial_per_group=args.initial, steps=args.steps, guidance=args.guidance,
                        reward_epochs=args.reward_epochs,
                        prompt_steps=args.prompt_steps, lora_steps=args.lora_steps,
                        lora_per_group=args.lora_per_group, lora_examples=args.lora_examples,
                        draft_steps=args.draft_steps, draft_learning_rate=args.draft_lr, serve_url=args.serve_url,
                        serve_dir=args.serve_dir, serve_db=args.serve_db, serve_seconds=args.serve_seconds,
                        serve_concurrency=args.concurrency,
                        arms=DEFAULT_ARMS + ("refresh",) if args.refresh_arm else DEFAULT_ARMS)
    if args.prepare_server:
        summary = prepare_server(config, args.prepare_server)
        written = f"server folder written to {args.prepare_server} ({summary['groups']} audience groups)"
        emit(summary, args.json, [f"{written}; start the server with", "  " + " ".join(summary["serve_command"])])
        return 0
    client = None
    if config.serve_url is not None:
        from studio.serving.drive import LoopClient

        config.check()  # --serve-url without --serve-dir: one error before the client is built
        client = LoopClient(config.serve_url, token=os.environ.get("STUDIO_API_TOKEN"), seconds=config.serve_seconds,
                            concurrency=config.serve_concurrency)
    report = run_loop(config, args.out, progress=not args.json, client=client)
    emit(report.to_dict(), args.json, _summary(report))
    return 0


def _summary(report) -> list[str]:
    lines = []
    for arm, records in report.rounds.items():
        ctrs = ", ".join(f"{r['true_ctr']['mean']:.4f}" for r in records)
        lines.append(f"{arm:>12}: true CTR per round {ctrs}")
    for name, gain in report.comparisons.items():
        if isinstance(gain, dict):
            lines.append(f"{name:>24}: {gain['gain']:+.1%} [{gain['ci'][0]:+.1%}, {gain['ci'][1]:+.1%}]")
    gaps = [r["hacking"]["gap_points"] for r in report.rounds.get("loop", []) if "hacking" in r]
    if gaps:
        lines.append(f"hacking gap (points) per round: {', '.join(f'{g:+.1f}' for g in gaps)}")
    lines.append(f"goals: {', '.join(f'{k}={v}' for k, v in report.goals.items())}")
    lines.append(f"files: {report.files['report']}, {report.files['plot']} ({report.seconds:.0f} s)")
    return lines
