// Package shadow declares a predeclared identifier that generated code
// uses: txlockgen must refuse it (see gen_test.go).
package shadow

import "context"

const true = false

type Service interface {
	//txlock:lock method
	M(ctx context.Context) error
}
