package testbed

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/api7/ext-plugin-proto/go/A6"
	A6Err "github.com/api7/ext-plugin-proto/go/A6/Err"
	ei "github.com/api7/ext-plugin-proto/go/A6/ExtraInfo"
	hreq "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	hresp "github.com/api7/ext-plugin-proto/go/A6/HTTPRespCall"
	pc "github.com/api7/ext-plugin-proto/go/A6/PrepareConf"
	flatbuffers "github.com/google/flatbuffers/go"
)

// Frame types (the first byte of every frame), as in APISIX's constants.
const (
	TypeError        byte = 0
	TypePrepareConf  byte = 1
	TypeHTTPReqCall  byte = 2
	TypeExtraInfo    byte = 3
	TypeHTTPRespCall byte = 4
)

// MaxFrameSize is the largest payload APISIX sends or accepts: 1<<24 - 1.
const MaxFrameSize = 1<<24 - 1

// headerLen is the frame header: 1 type byte and a 3-byte big-endian length.
const headerLen = 4

// ErrFrameTooLarge is returned by WriteFrame for a payload over MaxFrameSize.
var ErrFrameTooLarge = errors.New("frame too large")

// ErrBadFrame wraps every decoding failure of a runner answer.
var ErrBadFrame = errors.New("bad frame")

// RunnerError is an Err frame (type 0) sent by the runner.
type RunnerError struct {
	Code A6Err.Code
}

// Error returns the same text as APISIX's err_to_msg.
func (e *RunnerError) Error() string {
	switch e.Code {
	case A6Err.CodeBAD_REQUEST:
		return "bad request"
	case A6Err.CodeSERVICE_UNAVAILABLE:
		return "service unavailable"
	case A6Err.CodeCONF_TOKEN_NOT_FOUND:
		return "conf token not found"
	}
	return fmt.Sprintf("unknown err %d", e.Code)
}

// IsConfTokenNotFound reports whether err carries an Err frame with code 2.
func IsConfTokenNotFound(err error) bool {
	var re *RunnerError
	return errors.As(err, &re) && re.Code == A6Err.CodeCONF_TOKEN_NOT_FOUND
}

// WriteFrame writes one frame (type byte, 3-byte big-endian length, payload)
// with a single Write call, like APISIX's send (one sock:send of a buffer
// table).
func WriteFrame(w io.Writer, ty byte, payload []byte) error {
	buf := make([]byte, headerLen+len(payload))
	if err := putFrame(buf, ty, payload); err != nil {
		return err
	}
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	return nil
}

func putFrame(buf []byte, ty byte, payload []byte) error {
	if len(payload) > MaxFrameSize {
		return fmt.Errorf("write frame: the max length of data is %d but got %d: %w",
			MaxFrameSize, len(payload), ErrFrameTooLarge)
	}
	binary.BigEndian.PutUint32(buf, uint32(len(payload)))
	buf[0] = ty
	copy(buf[headerLen:], payload)
	return nil
}

// ReadFrame reads one frame. A frame of type TypeError is returned as is (its
// payload is not decoded); use DecodeError for it.
func ReadFrame(r io.Reader) (ty byte, payload []byte, err error) {
	var hdr [headerLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("read frame: header too short: %w", err)
		}
		return 0, nil, fmt.Errorf("read frame: %w", err)
	}
	ty = hdr[0]
	n := int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
	if n == 0 {
		return ty, nil, nil
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, fmt.Errorf("read frame: data truncated: %w", err)
	}
	return ty, payload, nil
}

// decode runs fn and turns any panic of the flatbuffers accessors (they index
// the buffer without bounds checks of their own) into ErrBadFrame.
func decode(what string, buf []byte, fn func()) (err error) {
	if len(buf) < 8 {
		return fmt.Errorf("decode %s: %d bytes: %w", what, len(buf), ErrBadFrame)
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("decode %s: %v: %w", what, p, ErrBadFrame)
		}
	}()
	fn()
	return nil
}

// vecLen bounds a vector length read from an untrusted buffer, so that a
// forged length can't make us allocate more than the buffer could hold.
func vecLen(n int, buf []byte) int {
	if n < 0 {
		panic("negative vector length")
	}
	if n > len(buf)/4 {
		panic(fmt.Sprintf("vector length %d exceeds buffer", n))
	}
	return n
}

// DecodeError decodes the payload of an Err frame.
func DecodeError(payload []byte) (*RunnerError, error) {
	var code A6Err.Code
	err := decode("err", payload, func() {
		code = A6Err.GetRootAsResp(payload, 0).Code()
	})
	if err != nil {
		return nil, err
	}
	return &RunnerError{Code: code}, nil
}

// Entry is one name/value pair of a TextEntry vector. HasValue is false when
// the value field is absent (for a header or an arg this means "delete").
type Entry struct {
	Name     string
	Value    string
	HasValue bool
}

func readEntries(buf []byte, n int, get func(*A6.TextEntry, int) bool) []Entry {
	n = vecLen(n, buf)
	out := make([]Entry, 0, n)
	var te A6.TextEntry
	for i := 0; i < n; i++ {
		if !get(&te, i) {
			continue
		}
		v := te.Value()
		out = append(out, Entry{Name: string(te.Name()), Value: string(v), HasValue: v != nil})
	}
	return out
}

// StopAction is the Stop answer of an HTTPReqCall.
type StopAction struct {
	Status  int
	Headers []Entry
	Body    []byte // nil when the body vector is absent or empty
}

// RewriteAction is the Rewrite answer of an HTTPReqCall.
type RewriteAction struct {
	Path        string
	HasPath     bool
	Headers     []Entry
	Args        []Entry
	Body        []byte // nil when absent or empty
	RespHeaders []Entry
}

// ReqCallAnswer is a decoded HTTPReqCall answer. Stop and Rewrite are both
// nil for an answer without action (the request goes on unchanged) and for an
// action type APISIX does not know.
type ReqCallAnswer struct {
	ID      uint32
	Stop    *StopAction
	Rewrite *RewriteAction
}

// DecodeReqCallAnswer decodes the payload of an HTTPReqCall answer.
func DecodeReqCallAnswer(payload []byte) (*ReqCallAnswer, error) {
	ans := &ReqCallAnswer{}
	err := decode("HTTPReqCall answer", payload, func() {
		resp := hreq.GetRootAsResp(payload, 0)
		ans.ID = resp.Id()
		switch resp.ActionType() {
		case hreq.ActionStop:
			var tbl flatbuffers.Table
			if !resp.Action(&tbl) {
				panic("stop action without table")
			}
			var st hreq.Stop
			st.Init(tbl.Bytes, tbl.Pos)
			s := &StopAction{Status: int(st.Status())}
			s.Headers = readEntries(payload, st.HeadersLength(), st.Headers)
			if b := st.BodyBytes(); len(b) > 0 {
				s.Body = append([]byte(nil), b...)
			}
			ans.Stop = s
		case hreq.ActionRewrite:
			var tbl flatbuffers.Table
			if !resp.Action(&tbl) {
				panic("rewrite action without table")
			}
			var rw hreq.Rewrite
			rw.Init(tbl.Bytes, tbl.Pos)
			r := &RewriteAction{}
			if p := rw.Path(); p != nil {
				r.Path, r.HasPath = string(p), true
			}
			r.Headers = readEntries(payload, rw.HeadersLength(), rw.Headers)
			r.Args = readEntries(payload, rw.ArgsLength(), rw.Args)
			r.RespHeaders = readEntries(payload, rw.RespHeadersLength(), rw.RespHeaders)
			if b := rw.BodyBytes(); len(b) > 0 {
				r.Body = append([]byte(nil), b...)
			}
			ans.Rewrite = r
		}
	})
	if err != nil {
		return nil, err
	}
	return ans, nil
}

// RespCallAnswer is a decoded HTTPRespCall answer.
type RespCallAnswer struct {
	ID      uint32
	Status  int
	Headers []Entry
	Body    []byte // nil when absent or empty
}

// DecodeRespCallAnswer decodes the payload of an HTTPRespCall answer.
func DecodeRespCallAnswer(payload []byte) (*RespCallAnswer, error) {
	ans := &RespCallAnswer{}
	err := decode("HTTPRespCall answer", payload, func() {
		resp := hresp.GetRootAsResp(payload, 0)
		ans.ID = resp.Id()
		ans.Status = int(resp.Status())
		ans.Headers = readEntries(payload, resp.HeadersLength(), resp.Headers)
		if b := resp.BodyBytes(); len(b) > 0 {
			ans.Body = append([]byte(nil), b...)
		}
	})
	if err != nil {
		return nil, err
	}
	return ans, nil
}

// ExtraInfoQuestion is a decoded ExtraInfo request from the runner.
type ExtraInfoQuestion struct {
	Type    ei.Info
	VarName string // for ei.InfoVar
}

// DecodeExtraInfoQuestion decodes the payload of an ExtraInfo request.
func DecodeExtraInfoQuestion(payload []byte) (*ExtraInfoQuestion, error) {
	q := &ExtraInfoQuestion{}
	err := decode("ExtraInfo question", payload, func() {
		req := ei.GetRootAsReq(payload, 0)
		q.Type = req.InfoType()
		if q.Type == ei.InfoVar {
			var tbl flatbuffers.Table
			if !req.Info(&tbl) {
				panic("var info without table")
			}
			var v ei.Var
			v.Init(tbl.Bytes, tbl.Pos)
			q.VarName = string(v.Name())
		}
	})
	if err != nil {
		return nil, err
	}
	return q, nil
}

// DecodePrepareConfAnswer decodes the payload of a PrepareConf answer and
// returns the conf token.
func DecodePrepareConfAnswer(payload []byte) (uint32, error) {
	var tok uint32
	err := decode("PrepareConf answer", payload, func() {
		tok = pc.GetRootAsResp(payload, 0).ConfToken()
	})
	return tok, err
}
