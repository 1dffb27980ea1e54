"""The command line's process asks glibc to keep freed memory for reuse."""

import platform

from captioning.cli.host_memory import keep_freed_memory


def test_keep_freed_memory_takes_on_glibc_and_changes_nothing_elsewhere():
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
