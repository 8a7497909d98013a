"""Reading /proc/PID/smaps and smaps_rollup."""

import os

from pipeline.bench.smaps import mappings, parse_smaps, peaks, rollup

SMAPS = """\
5581a000-5581b000 rw-p 00000000 00:00 0                                  [heap]
Rss:                 900 kB
Anonymous:           900 kB
7f0000000000-7f0007e00000 r-xp 00200000 08:01 42     /venv/site-packages/litert_lm/liblitert-lm.so
Rss:               52212 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
7f0007e00000-7f0008000000 r-xp 00000000 08:01 43     /opt/my models/liblitert-lm.so (deleted)
Rss:                  64 kB
Anonymous:             4 kB
7f0008000000-7f0008100000 r-xp 00000000 08:01 44     /usr/lib/libc.so.6
Rss:                1024 kB
Anonymous:             0 kB
7f0009000000-7f0009100000 r--p 00000000 08:01 42     /venv/site-packages/litert_lm/liblitert-lm.so
Rss:                3120 kB
Anonymous:             0 kB
7f000a000000-7f000a100000 rw-p 00000000 00:00 0 
Rss:                   8 kB
"""


def test_parse_smaps_keeps_names_sizes_and_copy_on_write_pages():
    maps = parse_smaps(SMAPS)
    assert [m.file for m in maps] == [
        "[heap]", "/venv/site-packages/litert_lm/liblitert-lm.so", "/opt/my models/liblitert-lm.so",
        "/usr/lib/libc.so.6", "/venv/site-packages/litert_lm/liblitert-lm.so", ""]
    assert maps[1].start == 0x7f0000000000 and maps[1].end == 0x7f0007e00000
    assert [m.rss_kb for m in maps] == [900, 52212, 64, 1024, 3120, 8]
    assert [m.anonymous_kb for m in maps] == [900, 0, 4, 0, 0, None]


def test_mappings_reads_this_process():
    maps = mappings()
    assert any(m.file == "[heap]" or m.file == "" for m in maps)
    assert sum(m.rss_kb for m in maps) > 1024


def test_rollup_splits_this_process_into_private_and_file_backed():
    before = rollup(os.getpid())
    buffer = bytearray(64 << 20)  # 64 MB of private memory, touched
    after = rollup(os.getpid())
    assert after["private_mb"] > before["private_mb"] + 60
    assert abs(after["rss_mb"] - after["private_mb"] - after["file_backed_mb"]) < 0.01
    assert after["file_backed_mb"] > 1  # this interpreter's own code, at least
    assert 0 < after["pss_mb"] <= after["rss_mb"]
    del buffer


def test_peaks_takes_each_fields_own_maximum():
    assert peaks([{}, {"private_mb": 5.0, "pss_mb": 9.0}, {"private_mb": 7.0, "pss_mb": 8.0}]) == {
        "private_mb": 7.0, "pss_mb": 9.0}
    assert rollup(-1) == {} and peaks([{}]) == {}
