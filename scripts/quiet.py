#!/usr/bin/env python3
"""Was the machine quiet during a benchmark? (BENCHMARKS.md, "The machine")

The load average cannot say: a benchmark's own daemons push it past 2 on two
cores. This says what the load average mixes up:

    quiet.py mark FILE     before the run: CPU counters of the machine and
                           of every process running now
    quiet.py report FILE PID
                           after it: the share of CPU time the hypervisor
                           stole (another guest on the host), and the CPU
                           time of every process but the benchmark's (the
                           benchmark script's PID and its descendants), the
                           busiest named

Counted as others: processes that were running at `mark`, and processes
started since that do not descend from PID. Kernel threads that did the
benchmark's writes count as others. Processes that ended during the run are
not seen, whoever they belonged to.
"""

import json
import os
import sys


def ticks_of_processes():
    ticks = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # The parent is field 4 of stat(5); utime and stime, 14 and 15; the start time, 22.
        ticks[pid] = [name, int(fields[11]) + int(fields[12]), fields[19], fields[1]]
    return ticks


def cpu_counters():
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is in user)
    return values[:8]


def main():
    command, path = sys.argv[1], sys.argv[2]
    root = sys.argv[3] if len(sys.argv) > 3 else None
    if command == "mark":
        with open(path, "w") as f:
            json.dump({"cpu": cpu_counters(), "processes": ticks_of_processes()}, f)
        return
    with open(path) as f:
        before = json.load(f)
    cpu = [a - b for a, b in zip(cpu_counters(), before["cpu"])]
    total = sum(cpu) or 1
    hz = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    seconds = total / hz / cores
    now = ticks_of_processes()

    def descends_from_root(pid):
        seen = set()
        while pid in now and pid not in seen:
            if pid == root:
                return True
            seen.add(pid)
            pid = now[pid][3]
        return False

    others = []
    for pid, (name, ticks, started, _) in now.items():
        old = before["processes"].get(pid)
        if old and old[2] == started:
            if ticks > old[1]:
                others.append((ticks - old[1], name))
        elif ticks > 0 and not descends_from_root(pid):
            others.append((ticks, name))
    others.sort(reverse=True)
    used = sum(t for t, _ in others)
    busiest = ", ".join(f"{name} {t / hz:.2f} s" for t, name in others[:3]) or "none"
    print(
        f"machine over {seconds:.0f} s: steal {100 * cpu[7] / total:.1f} % of CPU time; "
        f"other processes used {used / hz:.2f} s of CPU "
        f"({100 * used / total:.1f} % of the machine; busiest: {busiest})"
    )


if __name__ == "__main__":
    main()
