// Command txlock operates the tables of txlock, the MySQL/MariaDB lock
// library: "txlock migrate up|down|status" creates, drops and inspects them.
//
// The server is named by --dsn, else by $DBLOCK_DSN, else it is
// root@tcp(127.0.0.1:3306)/test. Run "txlock --help" for the commands.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run executes the command line args and returns the process's exit code.
// An interrupt cancels the running command.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root, opts := newRootCmd(getenv)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "txlock:", opts.scrub(err.Error()))
		return 1
	}
	return 0
}
