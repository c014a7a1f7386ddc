package orders

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/txlock/txlock/dblock"
)

// Handler serves an OrderService over HTTP:
//
//	POST /orders               {"user_id": "u-7", "amount": 1500}
//	GET  /orders/{id}
//	POST /orders/{id}/pay
//	POST /orders/{id}/refund
//	POST /orders/{id}/cancel
//
// Every answer is a JSON [Response].
type Handler struct {
	svc OrderService
	mux *http.ServeMux
}

// Response is the body of every answer. Code is a stable word for
// programs: "ok", "already_refunded", "lock_timeout", ...
type Response struct {
	Code   string  `json:"code"`
	Error  string  `json:"error,omitempty"`
	Order  *Order  `json:"order,omitempty"`
	Refund *Refund `json:"refund,omitempty"`
}

// NewHandler returns a Handler for svc (typically the locking proxy).
func NewHandler(svc OrderService) *Handler {
	h := &Handler{svc: svc, mux: http.NewServeMux()}
	h.mux.HandleFunc("POST /orders", h.create)
	h.mux.HandleFunc("GET /orders/{id}", h.get)
	h.mux.HandleFunc("POST /orders/{id}/pay", h.pay)
	h.mux.HandleFunc("POST /orders/{id}/refund", h.refund)
	h.mux.HandleFunc("POST /orders/{id}/cancel", h.cancel)
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) create(w http.ResponseWriter, r *http.Request) {
	var req CreateRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		reply(w, http.StatusBadRequest, Response{Code: "invalid", Error: "body: " + err.Error()})
		return
	}
	o, err := h.svc.Create(r.Context(), req)
	if err != nil {
		replyErr(w, err)
		return
	}
	reply(w, http.StatusCreated, Response{Code: "ok", Order: &o})
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request) {
	id, ok := orderID(w, r)
	if !ok {
		return
	}
	o, err := h.svc.Get(r.Context(), id)
	if err != nil {
		replyErr(w, err)
		return
	}
	reply(w, http.StatusOK, Response{Code: "ok", Order: &o})
}

func (h *Handler) pay(w http.ResponseWriter, r *http.Request) {
	id, ok := orderID(w, r)
	if !ok {
		return
	}
	o, err := h.svc.Pay(r.Context(), PayRequest{OrderID: id})
	if err != nil {
		replyErr(w, err)
		return
	}
	reply(w, http.StatusOK, Response{Code: "ok", Order: &o})
}

func (h *Handler) refund(w http.ResponseWriter, r *http.Request) {
	id, ok := orderID(w, r)
	if !ok {
		return
	}
	rf, err := h.svc.Refund(r.Context(), RefundRequest{OrderID: id})
	if err != nil {
		replyErr(w, err)
		return
	}
	reply(w, http.StatusOK, Response{Code: "ok", Refund: &rf})
}

func (h *Handler) cancel(w http.ResponseWriter, r *http.Request) {
	id, ok := orderID(w, r)
	if !ok {
		return
	}
	o, err := h.svc.Cancel(r.Context(), CancelRequest{OrderID: id})
	if err != nil {
		replyErr(w, err)
		return
	}
	reply(w, http.StatusOK, Response{Code: "ok", Order: &o})
}

func orderID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		reply(w, http.StatusBadRequest, Response{Code: "invalid", Error: "invalid order id " + strconv.Quote(r.PathValue("id"))})
		return 0, false
	}
	return id, true
}

// replyErr maps the service's errors, and the lock's, to answers.
func replyErr(w http.ResponseWriter, err error) {
	status, code := http.StatusInternalServerError, "internal"
	switch {
	case errors.Is(err, ErrNotFound):
		status, code = http.StatusNotFound, "not_found"
	case errors.Is(err, ErrInvalid):
		status, code = http.StatusBadRequest, "invalid"
	case errors.Is(err, ErrAlreadyRefunded):
		status, code = http.StatusConflict, "already_refunded"
	case errors.Is(err, ErrAlreadyPaid):
		status, code = http.StatusConflict, "already_paid"
	case errors.Is(err, ErrNotPaid):
		status, code = http.StatusConflict, "not_paid"
	case errors.Is(err, ErrCancelled):
		status, code = http.StatusConflict, "cancelled"
	case errors.Is(err, dblock.ErrNotAcquired):
		// Another request holds the order longer than the wait allows.
		w.Header().Set("Retry-After", "1")
		reply(w, http.StatusServiceUnavailable, Response{Code: "lock_timeout",
			Error: "the order is busy: another request held its lock longer than the wait allows; retry"})
		return
	case errors.Is(err, dblock.ErrDeadlock), errors.Is(err, dblock.ErrLockLost):
		w.Header().Set("Retry-After", "1")
		status, code = http.StatusServiceUnavailable, "retry"
	}
	reply(w, status, Response{Code: code, Error: err.Error()})
}

func reply(w http.ResponseWriter, status int, body Response) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
