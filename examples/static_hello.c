/*
 * static_hello: a statically linked program (build.rs links every
 * static_*.c with -static). ckrun's agent enters programs through
 * LD_PRELOAD, which a static binary never honours, so ckrun must refuse to
 * run it (exit 5, a message that says "static") instead of running it
 * unprotected.
 */
#include <stdio.h>

int main(void)
{
    puts("hello from a static binary");
    return 0;
}
