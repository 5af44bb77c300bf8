"""``prunelab data``: where every corpus and task would be read from on this machine, and pre-fetching them."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    d = sub.add_parser("data", help="list corpora and tasks, where each is read from here, and fetch them")
    d.add_argument("--check", action="store_true",
                   help="also exit 1 if an input of the default commands (c4 train, wikitext2 test) cannot be had")
    d.add_argument("--download", nargs="+", metavar="NAME",
                   help="fetch into the Hugging Face cache for later offline use: corpus names (all splits), "
                        "CORPUS/SPLIT, task names, or 'all'")
    d.add_argument("--json", help="also write the listing to this JSON file")
    d.set_defaults(handler=run)


def inventory() -> list[dict]:
    """One row per corpus split and task: name, where it is read from, and its state here."""
    from ..data.corpora import CORPORA, data_dir, resolve_source
    from ..data.hub import _cached_dataset_dir, _hub_unreachable, cached_file
    from ..eval.tasks import TASKS, local_task_files

    unreachable = _hub_unreachable()
    fetch_state = "missing: no network, not cached" if unreachable else "downloaded on first use"
    rows = []
    for name, spec in CORPORA.items():
        for split in spec.splits:
            local, _, source = resolve_source(name, split)
            row = {"name": f"{name}/{split}", "kind": "corpus", "local": str(local) if local else None,
                   "hub": source.hub.describe() if source.hub else None}
            if local is not None:
                row.update(state="local", read_from=str(local), note=source.local_note)
            elif source.hub is not None and cached_file(source.hub) is not None:
                row.update(state="cached", read_from=str(cached_file(source.hub)), note=source.hub_note)
            else:
                row.update(state=fetch_state, read_from=source.hub.describe() if source.hub else None,
                           note=source.hub_note)
            rows.append(row)
    for name, task in TASKS.items():
        paths = local_task_files(name)
        hub = f"{task.hf[0]}" + (f":{task.hf[1]}" if task.hf[1] else "") + f" [{task.hf[2]}]" if task.hf else None
        row = {"name": name, "kind": "task", "local": str(paths[0]) if paths else None, "hub": hub}
        if paths:
            row.update(state="local", read_from=str(paths[0].parent), note=task.note or "")
        elif task.hf and _cached_dataset_dir(task.hf[0]):
            row.update(state="cached", read_from=hub, note="")
        else:
            row.update(state=fetch_state, read_from=hub, note="")
        rows.append(row)
    return [dict(r, data_dir=str(data_dir())) for r in rows]


def download(names: list[str], log=print) -> None:
    from ..data.corpora import CORPORA, ensure_corpus
    from ..eval.tasks import TASKS, load_task, resolve_task_names

    wanted = []
    for raw in names:
        if raw == "all":
            wanted += [(n, s) for n, spec in CORPORA.items() for s in spec.splits] + [(t, None) for t in TASKS]
            continue
        name, _, split = raw.partition("/")
        if name in CORPORA:
            wanted += [(name, split)] if split else [(name, s) for s in CORPORA[name].splits]
        else:
            wanted += [(t, None) for t in resolve_task_names([raw])]  # raises on unknown names
    for name, split in dict.fromkeys(wanted):
        if split is not None:
            path = ensure_corpus(name, split, log=log)
            log(f"{name}/{split}: {path}")
        else:
            data = load_task(name)
            log(f"{name}: {data.total_items} items from {data.source}")


def run(args) -> int:
    from pathlib import Path

    from ..export import write_json

    if args.download:
        download(args.download, log=lambda m: print(f"[prunelab] {m}", flush=True))
    rows = inventory()
    width = max(len(r["name"]) for r in rows)
    print(f"data directory: {rows[0]['data_dir']} (PRUNELAB_DATA overrides it)")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['state']:<32}  {r['read_from']}")
    if args.json:
        write_json(Path(args.json), {"items": rows})
    if args.check:
        needed = {"c4/train", "wikitext2/test"}
        missing = [r["name"] for r in rows if r["name"] in needed and r["state"].startswith("missing")]
        if missing:
            print(f"prunelab: missing for the default commands: {', '.join(missing)}", file=sys.stderr)
            return 1
    return 0

