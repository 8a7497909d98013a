"""Reading /proc/PID/smaps and choosing which of the runtime library's pages may be dropped."""

from pipeline.runtime.memory import mappings, parse_smaps, releasable_code

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


def test_only_the_runtime_librarys_unchanged_code_is_releasable():
    """Not libc, not the read-only data, not a mapping holding a page this process changed."""
    assert [m.start for m in releasable_code(parse_smaps(SMAPS))] == [0x7f0000000000]


def test_mappings_reads_this_process():
    maps = mappings()
    assert any(m.file == "[heap]" or m.file == "" for m in maps)
    assert sum(m.rss_kb for m in maps) > 1024
