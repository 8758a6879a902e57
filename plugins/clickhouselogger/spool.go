package clickhouselogger

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The spool keeps batches that could not be delivered on local disk, one
// file per batch, and gives them back oldest first.
//
// A file is written under a temporary name, synced, then renamed, so a crash
// never leaves a torn file under a final name. The final name carries what
// the index needs without reading the file:
//
//	<write time, Unix ns, 19 digits>-<run id>-<rows>-<oldest row, Unix ms>.spool
//
// The run id is random per process (a pid can repeat across restarts in a
// container).
//
// Names sort in write order, across runner processes too. During `apisix
// reload` two runners share the directory for a moment: both may write,
// but only the holder of an flock on <dir>/.lock replays, so no file is
// inserted twice.

const (
	spoolMagic   = "EDGESPL2" // EDGESPL1 files (no log-phase fields) are still read
	spoolMagicV1 = "EDGESPL1"
	spoolSuffix  = ".spool"
	spoolTmp     = ".tmp-"
	spoolLock    = ".lock"
	maxSpoolFile = 256 << 20 // a file larger than this is not ours
)

var (
	errSpoolFull    = errors.New("spool full")
	errSpoolCorrupt = errors.New("spool file corrupt")
	crcTable        = crc32.MakeTable(crc32.Castagnoli)
)

// spoolFile is one batch on disk.
type spoolFile struct {
	name        string
	size        int64
	rows        int64
	oldestMilli int64
}

type spool struct {
	dir   string
	max   int64
	runID string
	// wmu serializes writes (inserts run concurrently) and scans: the cap
	// is checked and the file named by one write at a time, and a scan
	// lists the directory with no write half done.
	wmu      sync.Mutex
	lastNano int64 // of the last file name written (wmu)
	now      func() time.Time

	lockFile *os.File
	owner    bool // holds the replay lock

	mu    sync.Mutex
	files []spoolFile // oldest first

	bytes       atomic.Int64
	rows        atomic.Int64
	oldestMilli atomic.Int64 // 0 when empty
	// inherited counts the rows of files this runner found rather than
	// wrote (left by an earlier runner, or by the old one during a
	// reload): they were enqueued by another process.
	inherited atomic.Int64
}

// openSpool creates dir if needed and indexes the files already there (left
// by an earlier runner).
func openSpool(dir string, max int64, now func() time.Time) (*spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	s := &spool{dir: dir, max: max, runID: newRunID(), now: now}
	lf, err := os.OpenFile(filepath.Join(dir, spoolLock), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	s.lockFile = lf
	s.removeStaleTemps()
	if err := s.scan(); err != nil {
		lf.Close()
		return nil, err
	}
	s.tryLock()
	return s, nil
}

// tryLock takes the replay lock if it is free. It reports whether this
// runner holds it.
func (s *spool) tryLock() bool {
	if s.owner {
		return true
	}
	if err := syscall.Flock(int(s.lockFile.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
		s.owner = true
	}
	return s.owner
}

// close releases the replay lock.
func (s *spool) close() {
	if s.lockFile != nil {
		_ = s.lockFile.Close() // closing releases the flock
		s.lockFile = nil
		s.owner = false
	}
}

// removeStaleTemps deletes temporary files a crashed runner left; a recent
// one may belong to a runner writing right now.
func (s *spool) removeStaleTemps() {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), spoolTmp) {
			continue
		}
		if fi, err := e.Info(); err == nil && s.now().Sub(fi.ModTime()) > time.Minute {
			_ = os.Remove(filepath.Join(s.dir, e.Name()))
		}
	}
}

// scan rebuilds the index from the directory (files written by another
// runner appear here). It holds wmu: a file this runner writes meanwhile
// would be missing from the listing, and then from the index.
func (s *spool) scan() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("scan spool: %w", err)
	}
	var files []spoolFile
	for _, e := range ents {
		f, ok := parseSpoolName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		f.size = fi.Size()
		files = append(files, f)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	s.mu.Lock()
	known := make(map[string]bool, len(s.files))
	for _, f := range s.files {
		known[f.name] = true
	}
	for _, f := range files {
		if !known[f.name] && !s.mine(f.name) {
			s.inherited.Add(f.rows)
		}
	}
	s.files = files
	s.recount()
	s.mu.Unlock()
	return nil
}

// recount refreshes the totals from the whole index; s.mu is held. write
// and remove update them as they change the index.
func (s *spool) recount() {
	var b, r int64
	for _, f := range s.files {
		b += f.size
		r += f.rows
	}
	s.bytes.Store(b)
	s.rows.Store(r)
	s.oldestMilli.Store(oldestOf(s.files))
}

// older returns the older of two oldest-row times, where 0 means unknown.
func older(a, b int64) int64 {
	if a == 0 || (b > 0 && b < a) {
		return b
	}
	return a
}

// oldestOf returns the time of the oldest row in files, 0 when unknown.
func oldestOf(files []spoolFile) int64 {
	var o int64
	for _, f := range files {
		o = older(o, f.oldestMilli)
	}
	return o
}

// mine reports whether this process wrote the file.
func (s *spool) mine(name string) bool {
	return strings.HasPrefix(name[20:], s.runID+"-")
}

func newRunID() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return strconv.FormatInt(time.Now().UnixNano()&0xffffffffffff, 16)
	}
	return hex.EncodeToString(b[:])
}

func parseSpoolName(name string) (spoolFile, bool) {
	base, ok := strings.CutSuffix(name, spoolSuffix)
	if !ok {
		return spoolFile{}, false
	}
	parts := strings.Split(base, "-")
	if len(parts) != 4 || len(parts[0]) != 19 {
		return spoolFile{}, false
	}
	if parts[1] == "" || len(parts[1]) > 16 || strings.Trim(parts[1], "0123456789abcdef") != "" {
		return spoolFile{}, false
	}
	var n [4]int64
	for i, p := range parts {
		if i == 1 {
			continue
		}
		v, err := strconv.ParseInt(p, 10, 64)
		if err != nil || v < 0 {
			return spoolFile{}, false
		}
		n[i] = v
	}
	return spoolFile{name: name, rows: n[2], oldestMilli: n[3]}, true
}

// write stores one batch of rows of table. It fails with errSpoolFull when
// the file would take the spool past its cap.
func (s *spool) write(table string, rows []row) error {
	if len(rows) == 0 {
		return nil
	}
	data := encodeSpool(table, rows)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.bytes.Load()+int64(len(data)) > s.max {
		return errSpoolFull
	}
	oldest := rows[0].tsMilli
	for i := range rows {
		if rows[i].tsMilli < oldest {
			oldest = rows[i].tsMilli
		}
	}
	if oldest < 0 {
		oldest = 0
	}
	// Strictly increasing per process, so names never collide.
	ns := s.now().UnixNano()
	if ns <= s.lastNano {
		ns = s.lastNano + 1
	}
	s.lastNano = ns
	name := fmt.Sprintf("%019d-%s-%d-%d%s", ns, s.runID, len(rows), oldest, spoolSuffix)
	tmp := filepath.Join(s.dir, spoolTmp+name)
	if err := writeSynced(tmp, data); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write spool: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, name)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write spool: %w", err)
	}
	syncDir(s.dir)
	f := spoolFile{name: name, size: int64(len(data)), rows: int64(len(rows)), oldestMilli: oldest}
	s.mu.Lock()
	s.files = append(s.files, f)
	// Another runner may have written a later name meanwhile: keep order.
	if n := len(s.files); n > 1 && s.files[n-2].name > name {
		sort.Slice(s.files, func(i, j int) bool { return s.files[i].name < s.files[j].name })
	}
	s.bytes.Add(f.size)
	s.rows.Add(f.rows)
	s.oldestMilli.Store(older(s.oldestMilli.Load(), f.oldestMilli))
	s.mu.Unlock()
	return nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncDir makes a rename durable; best effort.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// oldest returns the oldest file, if any.
func (s *spool) oldest() (spoolFile, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.files) == 0 {
		return spoolFile{}, false
	}
	return s.files[0], true
}

// read loads and decodes one file.
func (s *spool) read(f spoolFile) (string, []row, error) {
	if f.size > maxSpoolFile {
		return "", nil, fmt.Errorf("read spool %s: %d bytes: %w", f.name, f.size, errSpoolCorrupt)
	}
	data, err := os.ReadFile(filepath.Join(s.dir, f.name))
	if err != nil {
		return "", nil, fmt.Errorf("read spool %s: %w", f.name, err)
	}
	table, rows, err := decodeSpool(data)
	if err != nil {
		return "", nil, fmt.Errorf("read spool %s: %w", f.name, err)
	}
	return table, rows, nil
}

// remove deletes a replayed (or unreadable) file.
func (s *spool) remove(f spoolFile) {
	if err := os.Remove(filepath.Join(s.dir, f.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		// Keep it indexed: a file we cannot delete would be replayed
		// again, but losing track of it would be worse for the cap.
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, g := range s.files {
		if g.name != f.name {
			continue
		}
		s.files = append(s.files[:i], s.files[i+1:]...)
		s.bytes.Add(-g.size)
		s.rows.Add(-g.rows)
		if g.oldestMilli > 0 && g.oldestMilli == s.oldestMilli.Load() {
			s.oldestMilli.Store(oldestOf(s.files))
		}
		return
	}
}

// age returns the age of the oldest spooled row, 0 when the spool is empty.
func (s *spool) age() time.Duration {
	o := s.oldestMilli.Load()
	if o == 0 {
		return 0
	}
	d := s.now().Sub(time.UnixMilli(o))
	if d < 0 {
		return 0
	}
	return d
}

// encodeSpool serializes a batch: magic, CRC-32C of the payload, payload.
func encodeSpool(table string, rows []row) []byte {
	b := make([]byte, 0, 64+len(rows)*160)
	b = append(b, spoolMagic...)
	b = append(b, 0, 0, 0, 0) // CRC, filled below
	start := len(b)
	b = appendString(b, table)
	b = binary.AppendUvarint(b, uint64(len(rows)))
	for i := range rows {
		r := &rows[i]
		b = binary.AppendVarint(b, r.tsMilli)
		b = binary.AppendUvarint(b, uint64(r.status))
		b = binary.AppendUvarint(b, uint64(r.latencyMs))
		for _, s := range [...]string{r.routeID, r.method, r.host, r.path, r.clientIP, r.userAgent, r.requestID, r.tenant, r.consumer} {
			b = appendString(b, s)
		}
		for _, l := range [...][]string{r.reqNames, r.reqValues, r.respNames, r.respValues} {
			b = appendList(b, l)
		}
		// EDGESPL2: the log-phase fields.
		b = append(b, r.source, r.rlHave)
		for _, v := range [...]uint64{uint64(r.upstreamMs), uint64(r.apisixMs), r.bytesSent, r.requestLen} {
			b = binary.AppendUvarint(b, v)
		}
		for _, v := range [...]int64{r.rlLimit, r.rlRemaining, r.retryAfter} {
			b = binary.AppendVarint(b, v)
		}
		for _, s := range [...]string{r.serviceID, r.upstreamAddr, r.rlStatus} {
			b = appendString(b, s)
		}
		b = appendList(b, r.customNames)
		b = appendList(b, r.customValues)
	}
	binary.BigEndian.PutUint32(b[len(spoolMagic):], crc32.Checksum(b[start:], crcTable))
	return b
}

func appendList(b []byte, l []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(l)))
	for _, s := range l {
		b = appendString(b, s)
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// spoolDecoder reads a payload with bounds checks; the first problem sticks.
type spoolDecoder struct {
	b   []byte
	err error
}

func (d *spoolDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errSpoolCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *spoolDecoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errSpoolCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *spoolDecoder) str() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.err = errSpoolCorrupt
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *spoolDecoder) list() []string {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) { // every string takes at least one byte
		d.err = errSpoolCorrupt
		return nil
	}
	if n == 0 {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		out[i] = d.str()
	}
	return out
}

func (d *spoolDecoder) byte() uint8 {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.err = errSpoolCorrupt
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *spoolDecoder) small(limit uint64) uint64 {
	v := d.uvarint()
	if v > limit {
		d.err = errSpoolCorrupt
	}
	return v
}

// decodeSpool parses a file written by encodeSpool.
func decodeSpool(data []byte) (string, []row, error) {
	if len(data) < len(spoolMagic)+4 {
		return "", nil, errSpoolCorrupt
	}
	v2 := string(data[:len(spoolMagic)]) == spoolMagic
	if !v2 && string(data[:len(spoolMagicV1)]) != spoolMagicV1 {
		return "", nil, errSpoolCorrupt
	}
	payload := data[len(spoolMagic)+4:]
	if binary.BigEndian.Uint32(data[len(spoolMagic):]) != crc32.Checksum(payload, crcTable) {
		return "", nil, errSpoolCorrupt
	}
	d := &spoolDecoder{b: payload}
	table := d.str()
	n := d.uvarint()
	// A row takes at least 16 bytes: refuse counts the data cannot hold.
	if d.err == nil && n > uint64(len(d.b))/16 {
		d.err = errSpoolCorrupt
	}
	if d.err != nil {
		return "", nil, d.err
	}
	rows := make([]row, n)
	for i := range rows {
		r := &rows[i]
		r.table = table
		r.tsMilli = d.varint()
		r.status = uint16(d.small(65535))
		r.latencyMs = uint32(d.small(4294967295))
		for _, p := range [...]*string{&r.routeID, &r.method, &r.host, &r.path, &r.clientIP, &r.userAgent, &r.requestID, &r.tenant, &r.consumer} {
			*p = d.str()
		}
		r.reqNames, r.reqValues = d.list(), d.list()
		r.respNames, r.respValues = d.list(), d.list()
		if v2 {
			r.source, r.rlHave = d.byte(), d.byte()
			r.upstreamMs = uint32(d.small(4294967295))
			r.apisixMs = uint32(d.small(4294967295))
			r.bytesSent, r.requestLen = d.uvarint(), d.uvarint()
			r.rlLimit, r.rlRemaining, r.retryAfter = d.varint(), d.varint(), d.varint()
			for _, p := range [...]*string{&r.serviceID, &r.upstreamAddr, &r.rlStatus} {
				*p = d.str()
			}
			r.customNames, r.customValues = d.list(), d.list()
		}
		if d.err == nil && (len(r.reqNames) != len(r.reqValues) || len(r.respNames) != len(r.respValues) || len(r.customNames) != len(r.customValues)) {
			d.err = errSpoolCorrupt
		}
		if d.err != nil {
			return "", nil, d.err
		}
	}
	if len(d.b) != 0 {
		return "", nil, errSpoolCorrupt
	}
	return table, rows, nil
}
