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
