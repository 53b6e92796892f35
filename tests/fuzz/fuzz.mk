# tests/fuzz/fuzz.mk - libFuzzer harnesses for blobfs's parsers.
#
# An automake fragment: Makefile.am does `include $(srcdir)/tests/fuzz/fuzz.mk`
# (after its own EXTRA_DIST = ... line, since this adds to it). Portable make
# only (no GNU extensions), so `automake -Wall -Werror` accepts it. The work is
# done by tests/fuzz/fuzz.sh; see tests/fuzz/README.md.
#
#   make fuzz                  build every harness with $(CLANG) into
#                              $(builddir)/tests/fuzz/ and fuzz each for
#                              $(FUZZ_SECONDS) s (a writable copy of its seed
#                              corpus); fails if any finds a crash, leak, UB
#                              or broken invariant (reproducers are left in
#                              tests/fuzz/artifacts/<harness>/)
#   make fuzz-regressions      run each harness once over the reproducers in
#                              tests/fuzz/regressions/<harness>/
#   make fuzz-build            only build them
#   make fuzz-clean            remove what the above made
#
# Both skip with a message (and succeed) when clang or libFuzzer is missing.
# Variables: CLANG, FUZZ_SECONDS, FUZZ_JOBS (harnesses run at once),
# FUZZ_HARNESSES (a subset), FUZZ_FLAGS (extra libFuzzer flags), FUZZ_IGNORE.
#
# Stand-alone, from a configured build tree:
#   make -f $SRC/tests/fuzz/fuzz.mk srcdir=$SRC builddir=. fuzz

CLANG = clang
FUZZ_SECONDS = 30
FUZZ_JOBS = 1
FUZZ_FLAGS =
FUZZ_HARNESSES =
FUZZ_PKG_CONFIG = pkg-config

FUZZ_ENV = srcdir='$(srcdir)' builddir='$(builddir)' CLANG='$(CLANG)' \
	PKG_CONFIG='$(FUZZ_PKG_CONFIG)' FUZZ_SECONDS='$(FUZZ_SECONDS)' \
	FUZZ_JOBS='$(FUZZ_JOBS)' FUZZ_FLAGS='$(FUZZ_FLAGS)'

fuzz:
	@test -n '$(srcdir)' || { echo 'fuzz: set srcdir= to the source tree' >&2; exit 1; }
	@$(FUZZ_ENV) $(SHELL) '$(srcdir)/tests/fuzz/fuzz.sh' run $(FUZZ_HARNESSES)

fuzz-regressions:
	@test -n '$(srcdir)' || { echo 'fuzz: set srcdir= to the source tree' >&2; exit 1; }
	@$(FUZZ_ENV) $(SHELL) '$(srcdir)/tests/fuzz/fuzz.sh' regress $(FUZZ_HARNESSES)

fuzz-build:
	@test -n '$(srcdir)' || { echo 'fuzz: set srcdir= to the source tree' >&2; exit 1; }
	@$(FUZZ_ENV) $(SHELL) '$(srcdir)/tests/fuzz/fuzz.sh' build $(FUZZ_HARNESSES)

fuzz-clean:
	-rm -rf tests/fuzz/obj tests/fuzz/logs tests/fuzz/artifacts
	-rm -f tests/fuzz/fuzz_name tests/fuzz/fuzz_digest tests/fuzz/fuzz_manifest \
	  tests/fuzz/fuzz_chunkmap tests/fuzz/fuzz_chunksums tests/fuzz/fuzz_content_range \
	  tests/fuzz/fuzz_retry_after tests/fuzz/fuzz_http_header \
	  tests/fuzz/fuzz_auth_challenge tests/fuzz/fuzz_auth_token tests/fuzz/fuzz_netrc \
	  tests/fuzz/fuzz_url

.PHONY: fuzz fuzz-regressions fuzz-build fuzz-clean

EXTRA_DIST += \
	tests/fuzz/README.md tests/fuzz/fuzz.mk tests/fuzz/fuzz.sh \
	tests/fuzz/gen-corpus.py tests/fuzz/gen-manifest-flood.py tests/fuzz/fuzz_common.h \
	tests/fuzz/fuzz_name.c tests/fuzz/fuzz_digest.c tests/fuzz/fuzz_manifest.c \
	tests/fuzz/fuzz_chunkmap.c tests/fuzz/fuzz_chunksums.c \
	tests/fuzz/fuzz_content_range.c tests/fuzz/fuzz_retry_after.c \
	tests/fuzz/fuzz_http_header.c tests/fuzz/fuzz_auth_challenge.c \
	tests/fuzz/fuzz_auth_token.c tests/fuzz/fuzz_netrc.c tests/fuzz/fuzz_url.c \
	tests/fuzz/corpus tests/fuzz/dict tests/fuzz/regressions
