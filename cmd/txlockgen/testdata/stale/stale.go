// Package stale has a proxy file that no longer compiles: txlockgen must
// ignore it when it loads the package, and generate anew.
package stale

import "context"

type Service interface {
	//txlock:lock resource=job:{name}
	Run(ctx context.Context, name string) error
}
