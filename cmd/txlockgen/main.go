package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run parses the flags, generates and writes the output, and returns the
// process's exit status. Errors go to stderr, one per line, each starting
// with file:line when it concerns the source.
func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("txlockgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	fs.StringVar(&cfg.typeName, "type", "", "the service interface to proxy (required)")
	fs.StringVar(&cfg.output, "output", "", "output file (default <lower(type)>_txlock.go in -dir)")
	fs.StringVar(&cfg.proxyName, "name", "", "name of the proxy type (default Locked<type>)")
	fs.StringVar(&cfg.dir, "dir", ".", "directory of the package that declares the interface")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: txlockgen -type Interface [-output file] [-name Proxy] [-dir dir]")
		fmt.Fprintln(stderr, "Generates a locking proxy for Interface; see `go doc github.com/txlock/txlock/cmd/txlockgen`.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if cfg.typeName == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	out, src, err := generate(cfg)
	if err != nil {
		printErr(stderr, err)
		return 1
	}
	if err := os.WriteFile(out, src, 0o644); err != nil {
		fmt.Fprintln(stderr, "txlockgen:", err)
		return 1
	}
	return 0
}

// printErr prints each error of err (a join of them, or one) on its line,
// prefixed with "txlockgen: " unless it starts with a position.
func printErr(w io.Writer, err error) {
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	for _, e := range errs {
		var pe *posError
		if errors.As(e, &pe) {
			fmt.Fprintln(w, e)
			continue
		}
		fmt.Fprintln(w, "txlockgen:", e)
	}
}

// relPath returns path relative to the working directory when it is
// below it, for short file:line messages.
func relPath(path string) string {
	wd, err := os.Getwd()
	if err != nil {
		return path
	}
	rel, err := filepath.Rel(wd, path)
	if err != nil || strings.HasPrefix(rel, "..") {
		return path
	}
	return rel
}
