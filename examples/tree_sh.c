/*
 * tree_sh: runs a shell script with bash, for ckrun's end-to-end tests of
 * process trees (tests/trees.rs).
 *
 * The test harness runs compiled examples (Program::c) and Python scripts,
 * not shell scripts, so tree_pipeline.sh is run through this: it execs
 * /bin/bash (found on PATH when absent) on its arguments, in place, so the
 * process ckrun starts becomes bash itself with the same pid. That exec
 * happens under ckrun's agent too, as every command the script runs does.
 *
 * Usage: tree_sh SCRIPT [ARGS...]
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: tree_sh SCRIPT [ARGS...]\n");
        return 2;
    }
    /* argv[0] becomes "bash"; the script and its arguments follow. */
    argv[0] = "bash";
    execv("/bin/bash", argv);
    execvp("bash", argv);
    fprintf(stderr, "tree_sh: cannot exec bash: %s\n", strerror(errno));
    return 127;
}
