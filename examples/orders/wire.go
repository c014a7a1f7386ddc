//go:build wireinject

package orders

import (
	"github.com/google/wire"
	"gorm.io/gorm"

	"github.com/txlock/txlock/decorator/wireset"
)

// InitializeHandler builds the HTTP handler of the order service: the
// Locker on db (with lockOpts), the repository on tables, the service,
// its generated locking proxy bound to OrderService, and the handler. The
// cleanup function closes the Locker.
func InitializeHandler(db *gorm.DB, lockOpts wireset.LockerOptions, tables Tables, gateway Gateway) (*Handler, func(), error) {
	wire.Build(
		wireset.SetWithOptions,
		NewRepository,
		NewService,
		wire.Bind(new(LockedOrderServiceInner), new(*Service)),
		NewLockedOrderService,
		wire.Bind(new(OrderService), new(*LockedOrderService)),
		NewHandler,
	)
	return nil, nil, nil
}
