package testdb

import (
	"fmt"
	"strings"
)

// fixedOptions are the mariadbd options testdb sets itself on a throwaway
// server: a test may not override them (the server would no longer be the
// one testdb manages: another directory, port or socket).
var fixedOptions = []string{
	"--no-defaults", "--defaults-file", "--defaults-extra-file", "--datadir", "--tmpdir",
	"--bind-address", "--port", "--socket", "--pid-file", "--log-error",
	"--init-file", "--user",
}

// checkServerOptions checks the extra mariadbd options of a throwaway
// server: each is one command-line option, "--name" or "--name=value"
// ("--innodb-rollback-on-timeout=ON"), and none is one of those testdb
// sets itself.
func checkServerOptions(opts []string) error {
	for _, o := range opts {
		name, _, _ := strings.Cut(o, "=")
		if !strings.HasPrefix(name, "--") || len(name) < 3 || strings.ContainsAny(name, " \t\n") {
			return fmt.Errorf("testdb: server option %q: want one mariadbd option, \"--name\" or \"--name=value\"", o)
		}
		norm := "--" + strings.ReplaceAll(name[2:], "_", "-")
		for _, f := range fixedOptions {
			if norm == f {
				return fmt.Errorf("testdb: server option %q: testdb sets %s itself on a throwaway server", o, f)
			}
		}
	}
	return nil
}
