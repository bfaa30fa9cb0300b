#!/usr/bin/env python3
"""Tables of the key numbers of one bench/compare.sh output folder.

    python3 bench/summarize.py bench/out/<UTC time>

Reads every *.json line the runs left there (peer-* and meshgate-*), prints
Markdown tables to stdout. Only numbers found in those files are printed.
"""
import json
import pathlib
import sys


def load(folder):
    runs = {}
    for p in sorted(pathlib.Path(folder).glob("*.json")):
        text = p.read_text().strip()
        if not text:
            continue
        try:
            runs[p.stem] = json.loads(text.splitlines()[-1])
        except json.JSONDecodeError:
            print(f"<!-- {p.name}: not JSON -->")
    return runs


def g(d, *path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def fmt(x, nd=2):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def sum_keys(d, keys):
    if not isinstance(d, dict):
        return None
    vals = [d.get(k) for k in keys if d.get(k) is not None]
    return round(sum(vals), 3) if vals else None


def other(phase):
    names = ", ".join(f"{o['comm']} {o['cpuSeconds']}" for o in (g(phase, "otherProcesses") or []))
    return f"{fmt(g(phase, 'otherCpuSeconds'))} ({names})" if names else fmt(g(phase, "otherCpuSeconds"))


def route(runs):
    print("### route (a) max, window 1000 end to end\n")
    print("| run | delivered/s | lost | p50 / p99 ms | CPU s/100k A | B | Redis | PostgreSQL | daemons (clients) | busy % | other CPU s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, r in runs.items():
        if "route" not in name or "overload" in name:
            continue
        m = r.get("max") or {}
        c = m.get("cpuSecondsPer100kDelivered") or m.get("cpuSecondsPer100k") or {}
        clients = c.get("daemons") if "daemons" in c else sum_keys(c, ["clients0", "clients1"])
        lat = m.get("latencyMs") or {}
        print(f"| {name} | {fmt(m.get('deliveredPerS'), 0)} | {fmt(m.get('lost'))} | {fmt(lat.get('p50'), 3)} / {fmt(lat.get('p99'), 3)} "
              f"| {fmt(c.get('A'), 3)} | {fmt(c.get('B'), 3)} | {fmt(c.get('redis'), 3)} | {fmt(c.get('postgres'), 3)} | {fmt(clients, 3)} "
              f"| {fmt(m.get('machineBusyPct'), 1)} | {other(m)} |")
    print("\n### route (b) fixed 5,000/s\n")
    print("| run | delivered/s | lost | p50 | p90 | p99 | max ms | schedule lag p99 / max | CPU s/100k A | B | Redis | busy % | other CPU s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, r in runs.items():
        if "route" not in name or "overload" in name:
            continue
        m = r.get("rate") or {}
        c = m.get("cpuSecondsPer100kDelivered") or m.get("cpuSecondsPer100k") or {}
        lat = m.get("latencyMs") or {}
        lag = m.get("scheduleLagMs") or {}
        print(f"| {name} | {fmt(m.get('deliveredPerS'), 0)} | {fmt(m.get('lost'))} | {fmt(lat.get('p50'), 3)} | {fmt(lat.get('p90'), 3)} "
              f"| {fmt(lat.get('p99'), 3)} | {fmt(lat.get('max'), 3)} | {fmt(lag.get('p99'), 3)} / {fmt(lag.get('max'), 3)} "
              f"| {fmt(c.get('A'), 3)} | {fmt(c.get('B'), 3)} | {fmt(c.get('redis'), 3)} | {fmt(m.get('machineBusyPct'), 1)} | {other(m)} |")


def api(runs):
    print("\n### api: 64 keep-alive connections, closed loop, 10 s\n")
    print("| run | requests/s (202) | lost | HTTP p50 / p99 ms | delivery p50 / p99 / max ms | CPU s/100k A | B | Redis | PostgreSQL | loadgen | busy % | other CPU s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, r in runs.items():
        if "-api-" not in name:
            continue
        m = r.get("run") or {}
        c = m.get("cpuSecondsPer100kDelivered") or m.get("cpuSecondsPer100k") or {}
        h = m.get("httpLatencyMs") or {}
        lat = m.get("latencyMs") or {}
        print(f"| {name} | {fmt(m.get('requestsPerS'), 0)} | {fmt(m.get('lost'))} | {fmt(h.get('p50'), 3)} / {fmt(h.get('p99'), 3)} "
              f"| {fmt(lat.get('p50'), 3)} / {fmt(lat.get('p99'), 3)} / {fmt(lat.get('max'), 3)} | {fmt(c.get('A'), 3)} | {fmt(c.get('B'), 3)} "
              f"| {fmt(c.get('redis'), 3)} | {fmt(c.get('postgres'), 3)} | {fmt(c.get('loadgen'), 3)} | {fmt(m.get('machineBusyPct'), 1)} | {other(m)} |")


def idle(runs):
    print("\n### idle\n")
    print("| run | daemons | connected | connect s | A RSS before → after KiB | **KiB per connection** | client side KiB per daemon |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in runs.items():
        if "-idle-" not in name:
            continue
        if "nodeA" in r:  # the peer
            a = r["nodeA"]
            per_client = None
            rss = r.get("clientRssKiB") or {}
            if rss and g(r, "connect", "connected"):
                per_client = sum(rss.values()) / r["connect"]["connected"]
            print(f"| {name} | {fmt(g(r, 'connect', 'requested'))} | {fmt(g(r, 'connect', 'connected'))} | {fmt(g(r, 'connect', 'ms') / 1000 if g(r, 'connect', 'ms') else None, 1)} "
                  f"| {fmt(g(a, 'before', 'rssKiB'))} → {fmt(g(a, 'after', 'rssKiB'))} | **{fmt(a.get('rssPerConnectionKiB'))}** | {fmt(per_client, 1)} (whole process) |")
        for run in r.get("runs") or []:
            a = run.get("podA") or {}
            print(f"| {name} | {fmt(run.get('daemons'))} | {fmt(g(run, 'connect', 'connected'))} | {fmt(g(run, 'connect', 'ms') / 1000 if g(run, 'connect', 'ms') else None, 1)} "
                  f"| {fmt(a.get('rssKiBBefore'))} → {fmt(a.get('rssKiBAfter'))} | **{fmt(a.get('rssPerConnectionKiB'))}** | {fmt(g(run, 'simulatedDaemons', 'rssPerDaemonKiB'))} (growth) |")


def ingest(runs):
    print("\n### ingest (meshgate only)\n")
    print("| run | phase | lines written/s | persisted/s | to client/s | client p50 / p99 / max ms | backlog max | CPU s/100k stored A | PostgreSQL | Redis | busy % | other CPU s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, r in runs.items():
        if "ingest" not in name:
            continue
        for ph in ("rate", "max"):
            m = r.get(ph) or {}
            c = m.get("cpuSecondsPer100k") or {}
            lat = m.get("clientLatencyMs") or {}
            print(f"| {name} | {ph} | {fmt(m.get('linesSentPerS'), 0)} | {fmt(m.get('linesPersistedPerS'), 0)} | {fmt(m.get('clientLinesPerS'), 0)} "
                  f"| {fmt(lat.get('p50'), 1)} / {fmt(lat.get('p99'), 1)} / {fmt(lat.get('max'), 1)} | {fmt(g(m, 'backlogLines', 'max'), 0)} "
                  f"| {fmt(c.get('A'), 3)} | {fmt(c.get('postgres'), 3)} | {fmt(c.get('redis'), 3)} | {fmt(m.get('machineBusyPct'), 1)} | {other(m)} |")
        print(f"| {name} | end | lines written {fmt(g(r, 'end', 'linesSent'))}, rows {fmt(g(r, 'end', 'rowsStored'))}, not stored {fmt(g(r, 'end', 'linesNotStored'))}, statuses {g(r, 'end', 'taskStatuses')} | | | | | | | | | | |")


def register(runs):
    print("\n### register (meshgate only)\n")
    print("| run | registered | registrations/s | p50 / p90 / p99 / max ms | CPU s per 1k: A | PostgreSQL | Redis | busy % | other CPU s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, r in runs.items():
        if "register" not in name:
            continue
        m = r.get("run") or {}
        c = m.get("cpuSeconds") or {}
        n = m.get("registered") or 0
        per = lambda k: round(c[k] * 1000 / n, 3) if n and c.get(k) is not None else None
        lat = m.get("latencyMs") or {}
        print(f"| {name} | {fmt(n)} | {fmt(m.get('registrationsPerS'), 0)} | {fmt(lat.get('p50'), 1)} / {fmt(lat.get('p90'), 1)} / {fmt(lat.get('p99'), 1)} / {fmt(lat.get('max'), 1)} "
              f"| {fmt(per('A'), 3)} | {fmt(per('postgres'), 3)} | {fmt(per('redis'), 3)} | {fmt(m.get('machineBusyPct'), 1)} | {other(m)} |")


def overload(runs):
    print("\n### overload\n")
    print("| run | (a) sent/s | (a) delivered | (a) lost | of which failed at send | lost unnoticed | A's subscriber dropped by Redis | A after | (b) delivered / sent |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |")
    for name, r in runs.items():
        if "overload" not in name:
            continue
        m, b = r.get("max") or {}, r.get("rate") or {}
        o = r.get("overload") or {}
        dropped = len(o.get("redisLogOutputBufferLines") or []) if "overload" in r else None
        after = (f"readyz {o.get('podAReadyzAtEnd')}" if o else
                 ("exited" if r.get("unexpectedExits") else "up"))
        print(f"| {name} | {fmt(m.get('sentPerS'), 0)} | {fmt(m.get('delivered'))} | {fmt(m.get('lost'))} | {fmt(m.get('sendFailed'))} "
              f"| {fmt(m.get('lostUnnoticed'))} | {fmt(dropped)} | {after} | {fmt(b.get('delivered'))} / {fmt(b.get('sent'))} |")


def main():
    runs = load(sys.argv[1] if len(sys.argv) > 1 else ".")
    route(runs)
    api(runs)
    idle(runs)
    ingest(runs)
    register(runs)
    overload(runs)


if __name__ == "__main__":
    main()
