package linearize

import (
	"os"
	"path/filepath"
	"strings"
)

// EnvHTML is the variable that asks the tests for porcupine's
// visualisations: a directory (created if missing), or a file name ending
// in ".html".
const EnvHTML = "TXLOCK_LINEARIZE_HTML"

// HTMLPath returns where the visualisation of the check called name should
// go, for Options.HTML: "" when $TXLOCK_LINEARIZE_HTML is not set; name.html
// in it when it names a directory; and when it names a file x.html,
// x-name.html beside it, so that several checks of one run do not
// overwrite each other. name should be a short file-name-safe word.
func HTMLPath(name string) string {
	v := os.Getenv(EnvHTML)
	if v == "" {
		return ""
	}
	name = strings.Map(func(r rune) rune {
		if r == '/' || r == os.PathSeparator || r == ' ' {
			return '_'
		}
		return r
	}, name)
	if base, ok := strings.CutSuffix(v, ".html"); ok {
		return base + "-" + name + ".html"
	}
	_ = os.MkdirAll(v, 0o755) // VisualizePath reports a failure
	return filepath.Join(v, name+".html")
}
