#!/bin/sh
# tests/fuzz/fuzz.sh - build and run the libFuzzer harnesses of tests/fuzz/.
#
#   fuzz.sh build   [harness...]  build the harnesses
#   fuzz.sh run     [harness...]  build, then fuzz each for $FUZZ_SECONDS
#   fuzz.sh regress [harness...]  build, then run each once over its
#                                 tests/fuzz/regressions/<harness>/ files
#
# Normally called by `make fuzz` / `make fuzz-regressions` (tests/fuzz/fuzz.mk),
# which pass these variables; all have defaults for stand-alone use:
#   srcdir        the source tree (default: two levels above this script)
#   builddir      the build tree; harnesses go to $builddir/tests/fuzz/
#                 (default: .). Its config.h is used if it has one.
#   CLANG         clang with libFuzzer (default: clang)
#   PKG_CONFIG    (default: pkg-config)
#   FUZZ_SECONDS  per harness (default: 30)
#   FUZZ_JOBS     harnesses fuzzed at once (default: 1)
#   FUZZ_FLAGS    extra libFuzzer flags, e.g. "-jobs=2 -workers=2"
#   FUZZ_IGNORE   invariant checks to turn off, e.g. "loopback_remote"
#                 (see fuzz_common.h)
#   FUZZ_CORPUS_DIR  keep each harness's grown corpus in
#                 $FUZZ_CORPUS_DIR/<harness> instead of a temporary copy
# Exits 0 with a message when clang or libFuzzer is missing.
set -u

script_dir=$(cd "$(dirname "$0")" && pwd)
srcdir=${srcdir:-$script_dir/../..}
builddir=${builddir:-.}
CLANG=${CLANG:-clang}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
FUZZ_JOBS=${FUZZ_JOBS:-1}
FUZZ_FLAGS=${FUZZ_FLAGS:-}
export FUZZ_IGNORE="${FUZZ_IGNORE:-}"

ALL_HARNESSES="name digest manifest chunkmap chunksums content_range retry_after
http_header auth_challenge auth_token netrc url"
# The parts of src/ the harnesses need (compiled here with the fuzzing flags,
# not taken from libblobfs.a, which the configured compiler builds).
SOURCES="util log digest name layer_name manifest strmap chunkmap http auth url"
SANFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS_FUZZ="-g -O1 $SANFLAGS"

mode=${1:-run}
[ $# -gt 0 ] && shift
harnesses=${*:-$ALL_HARNESSES}

fz=$srcdir/tests/fuzz
out=$builddir/tests/fuzz

skip() {
	echo "fuzz: skipped: $*"
	exit 0
}

# Is there a clang that links libFuzzer?
if ! command -v "$CLANG" >/dev/null 2>&1; then
	skip "'$CLANG' not found (set CLANG= to a clang with libFuzzer, e.g. clang-14)"
fi
mkdir -p "$out/obj" "$out/logs" || exit 1
probe=$out/obj/probe
printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
	'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return 0; }' >"$probe.c"
if ! "$CLANG" -fsanitize=fuzzer,address,undefined "$probe.c" -o "$probe" >"$probe.log" 2>&1; then
	skip "'$CLANG' cannot build a libFuzzer binary (-fsanitize=fuzzer): $(head -n 1 "$probe.log")"
fi
if ! deps=$($PKG_CONFIG --cflags --libs libcjson libcurl libcrypto 2>/dev/null); then
	skip "pkg-config cannot find libcjson, libcurl and libcrypto"
fi
dep_cflags=$($PKG_CONFIG --cflags libcjson libcurl libcrypto)
dep_libs=$($PKG_CONFIG --libs libcjson libcurl libcrypto)

# config.h: the configured build's, or a minimal one.
if [ -f "$builddir/config.h" ]; then
	confdir=$builddir
else
	confdir=$out/obj
	[ -f "$confdir/config.h" ] || printf '%s\n' '/* minimal config.h for the fuzz build */' \
		'#ifndef _GNU_SOURCE' '# define _GNU_SOURCE 1' '#endif' >"$confdir/config.h"
fi
INCLUDES="-I$confdir -I$srcdir/src -I$fz"

# Rebuild target $1 if it is missing or older than any of the other files.
stale() {
	t=$1
	shift
	[ -f "$t" ] || return 0
	for f in "$@"; do
		[ "$f" -nt "$t" ] && return 0
	done
	return 1
}

build() {
	headers=$(ls "$srcdir"/src/*.h "$fz/fuzz_common.h" "$confdir/config.h")
	objs=
	for s in $SOURCES; do
		o=$out/obj/$s.o
		# shellcheck disable=SC2086
		if stale "$o" "$srcdir/src/$s.c" $headers; then
			echo "  CC (fuzz)  src/$s.c"
			# shellcheck disable=SC2086
			$CLANG $CFLAGS_FUZZ -fsanitize=fuzzer-no-link $INCLUDES $dep_cflags \
				-c "$srcdir/src/$s.c" -o "$o" || return 1
		fi
		objs="$objs $o"
	done
	for h in $harnesses; do
		[ -f "$fz/fuzz_$h.c" ] || { echo "fuzz: no harness '$h'" >&2; return 1; }
		b=$out/fuzz_$h
		# shellcheck disable=SC2086
		if stale "$b" "$fz/fuzz_$h.c" $headers $objs; then
			echo "  CCLD (fuzz) tests/fuzz/fuzz_$h"
			# shellcheck disable=SC2086
			$CLANG $CFLAGS_FUZZ -fsanitize=fuzzer $INCLUDES $dep_cflags \
				"$fz/fuzz_$h.c" $objs $dep_libs -lm -o "$b" || return 1
		fi
	done
}

# The largest input worth trying, per harness.
max_len() {
	case $1 in
	manifest) echo 65536 ;;
	chunkmap) echo 16384 ;;
	chunksums|netrc|auth_token|http_header) echo 8192 ;;
	*) echo 4096 ;;
	esac
}

# Fuzz one harness; prints one summary line; status 1 if it found something.
run_one() {
	h=$1
	log=$out/logs/$h.log
	art=$out/artifacts/$h
	mkdir -p "$art"
	if [ -n "${FUZZ_CORPUS_DIR:-}" ]; then
		corpus=$FUZZ_CORPUS_DIR/$h
		mkdir -p "$corpus"
	else
		corpus=$(mktemp -d "${TMPDIR:-/tmp}/blobfs-fuzz-$h.XXXXXX") || return 1
	fi
	# The seeds may be in a read-only source tree: fuzz a writable copy.
	if [ -d "$fz/corpus/$h" ]; then
		cp "$fz/corpus/$h"/* "$corpus/" 2>/dev/null
		chmod u+w "$corpus"/* 2>/dev/null
	fi
	set --
	[ -f "$fz/dict/$h.dict" ] && set -- "-dict=$fz/dict/$h.dict"
	# shellcheck disable=SC2086
	"$out/fuzz_$h" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
		-max_len="$(max_len "$h")" -print_final_stats=1 -artifact_prefix="$art/" \
		"$@" $FUZZ_FLAGS "$corpus" >"$log" 2>&1
	status=$?
	[ -z "${FUZZ_CORPUS_DIR:-}" ] && rm -rf "$corpus"
	execs=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
	ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1)
	if [ $status -eq 0 ]; then
		echo "fuzz: PASS $h (${FUZZ_SECONDS}s, ${execs:-?} exec/s, ${cov:-cov: ?}, ${ft:-ft: ?})"
		return 0
	fi
	echo "fuzz: FAIL $h (exit $status); log: $log"
	grep -E '^(==[0-9]+== ?ERROR|SUMMARY|INVARIANT|.*runtime error)' "$log" | head -n 5 | sed 's/^/fuzz:   /'
	ls "$art" 2>/dev/null | sed "s|^|fuzz:   reproducer: $art/|"
	return 1
}

case $mode in
build)
	build || exit 1
	;;
run)
	build || exit 1
	failed=0
	set -- $harnesses
	while [ $# -gt 0 ]; do
		batch=
		i=0
		while [ $# -gt 0 ] && [ $i -lt "$FUZZ_JOBS" ]; do
			batch="$batch $1"
			shift
			i=$((i + 1))
		done
		for h in $batch; do
			run_one "$h" >"$out/logs/$h.summary" &
		done
		wait
		for h in $batch; do
			cat "$out/logs/$h.summary"
			grep -q '^fuzz: FAIL' "$out/logs/$h.summary" && failed=1
		done
	done
	if [ $failed -ne 0 ]; then
		echo "fuzz: a harness found a crash, leak, undefined behaviour or broken invariant."
		echo "fuzz: reproduce with: $out/fuzz_<harness> <reproducer>; if it is a real bug, add"
		echo "fuzz: the (minimized: -minimize_crash=1 -runs=10000) file to tests/fuzz/regressions/<harness>/"
		exit 1
	fi
	;;
regress)
	build || exit 1
	failed=0
	for h in $harnesses; do
		d=$fz/regressions/$h
		n=0
		bad=0
		for f in "$d"/*; do
			[ -f "$f" ] || continue
			n=$((n + 1))
			# Big reproducers (hash floods) are kept gzipped.
			case $f in
			*.gz)
				in=$out/logs/regress-$h.input
				gzip -dc "$f" >"$in" || { bad=$((bad + 1)); continue; }
				;;
			*) in=$f ;;
			esac
			if ! "$out/fuzz_$h" -runs=1 -timeout=5 "$in" >"$out/logs/regress-$h.log" 2>&1; then
				echo "fuzz-regressions: FAIL $h $(basename "$f")"
				grep -E '^(==[0-9]+== ?ERROR|SUMMARY|INVARIANT|.*runtime error)' \
					"$out/logs/regress-$h.log" | head -n 3 | sed 's/^/    /'
				bad=$((bad + 1))
			fi
			[ "$in" = "$f" ] || rm -f "$in"
		done
		[ $n -gt 0 ] && echo "fuzz-regressions: $h: $((n - bad))/$n pass"
		[ $bad -gt 0 ] && failed=1
	done
	exit $failed
	;;
*)
	echo "usage: $0 build|run|regress [harness...]" >&2
	exit 2
	;;
esac
