"""Summarising a real py-spy raw profile of a ztunnel under load."""

from __future__ import annotations

from bench import profiles


def test_top_frames_of_a_recorded_ztunnel_profile(fixture_text):
    folded = fixture_text("pyspy_ztunnel.folded")
    leaves, total = profiles.self_time(folded)
    assert total == sum(int(line.rsplit(" ", 1)[1]) for line in folded.splitlines() if line.strip())
    top = profiles.top_frames(folded, n=3)
    names = [part.rsplit(" ", 1)[0] for part in top.split(", ")]
    assert len(names) == 3
    assert names[0] == leaves.most_common(1)[0][0]
    assert all(":" in n and "/" not in n for n in names)     # "file.py:function", no paths


def test_frames_are_shortened_and_counts_summed():
    folded = ("proc;main (/a/b/app.py:10);read (/usr/lib/python3.11/ssl.py:1134) 30\n"
              "proc;main (/a/b/app.py:10);read (/usr/lib/python3.11/ssl.py:1140) 10\n"
              "proc;main (/a/b/app.py:12) 60\n")
    assert profiles.top_frames(folded) == "app.py:main 60%, ssl.py:read 40%"
    assert profiles.top_frames("") == ""


def test_native_samples_waiting_in_c_are_off_cpu_and_left_out():
    """A --native profile of a real waypoint: the loop's epoll_pwait and a grpc thread's lock wait
    are not where the CPU went; a Python function named `select` is not a C wait."""
    folded = ("Thread;Runner.run (asyncio/runners.py:118);uv__io_poll (linux.c:1452);epoll_pwait (libc.so.6) 50\n"
              "Thread;_worker (concurrent/futures/thread.py:81);PyThread_acquire_lock_timed (python3.11);"
              "0x7f8120fa6f16 (libc.so.6) 30\n"
              "Thread;Runner.run (asyncio/runners.py:118);uv__io_poll (linux.c:1546);write (libc.so.6) 15\n"
              "Thread;Runner.run (asyncio/runners.py:118);select (app/pick.py:3) 5\n"
              "Thread;Thread.run (threading.py:975);recv (ambit/zds.py:61);recvmsg (libc.so.6) 40\n")
    leaves, total = profiles.self_time(folded)
    assert total == 20
    assert profiles.top_frames(folded) == "libc.so.6:write 75%, pick.py:select 25%"
    loop_read = "Thread;Runner.run (asyncio/runners.py:118);uv__read (stream.c:1154);read (libc.so.6) 7\n"
    assert profiles.self_time(loop_read) == ({"libc.so.6:read": 7}, 7), "a read on the loop's thread is work"
