package orders

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// OrderService manages orders: created, paid, then refunded, or cancelled
// before payment. Implementations must be safe for concurrent use.
type OrderService interface {
	// Create records a new, unpaid order. A new order has no other
	// holder: it is not locked.
	Create(ctx context.Context, req CreateRequest) (Order, error)

	// Pay charges an order that is new.
	//txlock:lock resource=order:{OrderID} wait=2s
	Pay(ctx context.Context, req PayRequest) (Order, error)

	// Refund gives the money of a paid order back, once.
	//txlock:lock resource=order:{OrderID} wait=2s
	Refund(ctx context.Context, req RefundRequest) (Refund, error)

	// Cancel cancels an order that is not paid yet.
	//txlock:lock resource=order:{OrderID} wait=2s
	Cancel(ctx context.Context, req CancelRequest) (Order, error)

	// Get returns an order. Reads take no lock: the proxy passes it through.
	Get(ctx context.Context, id int64) (Order, error)
}

// Order states.
const (
	StatusNew       = "new"
	StatusPaid      = "paid"
	StatusRefunded  = "refunded"
	StatusCancelled = "cancelled"
)

// An Order is what a user bought.
type Order struct {
	ID     int64  `json:"id"`
	UserID string `json:"user_id"`
	Amount int64  `json:"amount"` // in cents
	Status string `json:"status"`
}

// A Refund is money given back for an order.
type Refund struct {
	ID        int64     `json:"id"`
	OrderID   int64     `json:"order_id"`
	Amount    int64     `json:"amount"`
	GatewayID string    `json:"gateway_id"`
	At        time.Time `json:"at"`
}

// CreateRequest asks for a new order.
type CreateRequest struct {
	UserID string `json:"user_id"`
	Amount int64  `json:"amount"`
}

// PayRequest asks to charge an order.
type PayRequest struct{ OrderID int64 }

// RefundRequest asks to refund an order.
type RefundRequest struct{ OrderID int64 }

// CancelRequest asks to cancel an order.
type CancelRequest struct{ OrderID int64 }

// Errors of the service. The HTTP handler maps them to status codes.
var (
	ErrNotFound        = errors.New("order not found")
	ErrAlreadyRefunded = errors.New("order already refunded")
	ErrNotPaid         = errors.New("order not paid")
	ErrAlreadyPaid     = errors.New("order already paid")
	ErrCancelled       = errors.New("order cancelled")
	ErrInvalid         = errors.New("invalid request")
)

// A Gateway moves money with the outside world (a payment provider). It
// is called while the order's lock is held.
type Gateway interface {
	Charge(ctx context.Context, orderID, amount int64) (string, error)
	Refund(ctx context.Context, orderID, amount int64) (string, error)
}

// FakeGateway is a Gateway that takes Delay per call and always succeeds.
type FakeGateway struct{ Delay time.Duration }

// Charge waits Delay and returns a charge id.
func (g FakeGateway) Charge(ctx context.Context, orderID, _ int64) (string, error) {
	return g.call(ctx, "ch", orderID)
}

// Refund waits Delay and returns a refund id.
func (g FakeGateway) Refund(ctx context.Context, orderID, _ int64) (string, error) {
	return g.call(ctx, "re", orderID)
}

func (g FakeGateway) call(ctx context.Context, prefix string, orderID int64) (string, error) {
	select {
	case <-time.After(g.Delay):
		return fmt.Sprintf("%s_%d_%d", prefix, orderID, time.Now().UnixNano()), nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// Service implements OrderService. It does not lock: wrap it in
// LockedOrderService (NewLockedOrderService, or InitializeHandler) so that
// two processes never change one order at the same time.
type Service struct {
	repo    *Repository
	gateway Gateway
}

// NewService returns a Service on repo that moves money through gateway.
func NewService(repo *Repository, gateway Gateway) *Service {
	return &Service{repo: repo, gateway: gateway}
}

// Create records a new order.
func (s *Service) Create(ctx context.Context, req CreateRequest) (Order, error) {
	if req.UserID == "" || req.Amount <= 0 {
		return Order{}, fmt.Errorf("%w: want a user_id and a positive amount", ErrInvalid)
	}
	return s.repo.Insert(ctx, req.UserID, req.Amount)
}

// Pay charges a new order.
func (s *Service) Pay(ctx context.Context, req PayRequest) (Order, error) {
	o, err := s.repo.Get(ctx, req.OrderID)
	if err != nil {
		return Order{}, err
	}
	switch o.Status {
	case StatusPaid, StatusRefunded:
		return o, fmt.Errorf("order %d: %w", o.ID, ErrAlreadyPaid)
	case StatusCancelled:
		return o, fmt.Errorf("order %d: %w", o.ID, ErrCancelled)
	}
	if _, err := s.gateway.Charge(ctx, o.ID, o.Amount); err != nil {
		return o, fmt.Errorf("order %d: charge: %w", o.ID, err)
	}
	o.Status = StatusPaid
	return o, s.repo.SetStatus(ctx, o.ID, StatusPaid)
}

// Refund refunds a paid order, once: it reads the order, asks the gateway
// for the money, and records the refund. Without a lock, two concurrent
// calls would both read "paid" and refund twice.
func (s *Service) Refund(ctx context.Context, req RefundRequest) (Refund, error) {
	o, err := s.repo.Get(ctx, req.OrderID)
	if err != nil {
		return Refund{}, err
	}
	switch o.Status {
	case StatusRefunded:
		return Refund{}, fmt.Errorf("order %d: %w", o.ID, ErrAlreadyRefunded)
	case StatusNew, StatusCancelled:
		return Refund{}, fmt.Errorf("order %d is %s: %w", o.ID, o.Status, ErrNotPaid)
	}
	gatewayID, err := s.gateway.Refund(ctx, o.ID, o.Amount)
	if err != nil {
		return Refund{}, fmt.Errorf("order %d: refund: %w", o.ID, err)
	}
	if err := s.repo.SetStatus(ctx, o.ID, StatusRefunded); err != nil {
		return Refund{}, err
	}
	return s.repo.InsertRefund(ctx, o.ID, o.Amount, gatewayID)
}

// Cancel cancels a new order.
func (s *Service) Cancel(ctx context.Context, req CancelRequest) (Order, error) {
	o, err := s.repo.Get(ctx, req.OrderID)
	if err != nil {
		return Order{}, err
	}
	switch o.Status {
	case StatusCancelled:
		return o, nil // idempotent
	case StatusPaid, StatusRefunded:
		return o, fmt.Errorf("order %d is %s, refund it instead: %w", o.ID, o.Status, ErrAlreadyPaid)
	}
	o.Status = StatusCancelled
	return o, s.repo.SetStatus(ctx, o.ID, StatusCancelled)
}

// Get returns an order.
func (s *Service) Get(ctx context.Context, id int64) (Order, error) {
	return s.repo.Get(ctx, id)
}
