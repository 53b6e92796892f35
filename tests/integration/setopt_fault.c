/*
 * setopt_fault.c - an LD_PRELOAD shim for the tests: curl_easy_setopt fails
 * with CURLE_UNKNOWN_OPTION for the option whose number is in
 * $BLOBFS_TEST_FAIL_SETOPT, as an older libcurl would, and passes every
 * other call to libcurl. The one variadic argument is passed on as a
 * 64-bit word, which holds a long, a pointer or a curl_off_t alike on the
 * x86-64 and arm64 ABIs the tests run on.
 */
#define _GNU_SOURCE
#define CURL_DISABLE_TYPECHECK   /* curl.h would make curl_easy_setopt a macro */
#include <curl/curl.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>

CURLcode curl_easy_setopt(CURL *handle, CURLoption option, ...)
{
	static CURLcode (*real)(CURL *, CURLoption, ...);
	const char *fail = getenv("BLOBFS_TEST_FAIL_SETOPT");
	va_list ap;
	uint64_t arg;

	if (fail && atol(fail) == (long)option)
		return CURLE_UNKNOWN_OPTION;
	if (!real)
		real = (CURLcode (*)(CURL *, CURLoption, ...))dlsym(RTLD_NEXT, "curl_easy_setopt");
	va_start(ap, option);
	arg = va_arg(ap, uint64_t);
	va_end(ap);
	return real(handle, option, arg);
}
