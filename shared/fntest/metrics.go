package fntest

import (
	"io"
	"maps"
	"net/http"
	"slices"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/streamspace-dev/functions/shared/runtime"
)

// Scrape is one read of a function's /metrics, by metric name.
type Scrape map[string]*dto.MetricFamily

// Scrape reads the function's /metrics as Prometheus does, without a
// token, and parses the text format.
func (h *Harness) Scrape() Scrape {
	h.tb.Helper()
	return ScrapeURL(h.tb, h.URL+runtime.MetricsPath)
}

// ScrapeURL reads the metrics at url and parses them, failing the test when
// the answer is not 200 in Prometheus's text format.
func ScrapeURL(tb testing.TB, url string) Scrape {
	tb.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		tb.Fatalf("GET %s: status %d, want 200: %s", url, resp.StatusCode, body)
	}
	if ct := expfmt.ResponseFormat(resp.Header); ct.FormatType() != expfmt.TypeTextPlain {
		tb.Fatalf("GET %s: content type %q, want Prometheus text", url, resp.Header.Get("Content-Type"))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		tb.Fatalf("GET %s: not Prometheus text: %v", url, err)
	}
	return families
}

// Value is the sum of name's series whose labels include labels (nil
// matches every series), 0 when there is none.
func (s Scrape) Value(name string, labels map[string]string) float64 {
	var sum float64
	for _, m := range s.series(name, labels) {
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Untyped != nil:
			sum += m.Untyped.GetValue()
		}
	}
	return sum
}

// Has reports whether name has a series whose labels include labels.
func (s Scrape) Has(name string, labels map[string]string) bool {
	return len(s.series(name, labels)) > 0
}

// Labels lists the values label takes in name's series, sorted.
func (s Scrape) Labels(name, label string) []string {
	seen := map[string]bool{}
	for _, m := range s.series(name, nil) {
		for _, l := range m.GetLabel() {
			if l.GetName() == label {
				seen[l.GetValue()] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

func (s Scrape) series(name string, labels map[string]string) []*dto.Metric {
	f, ok := s[name]
	if !ok {
		return nil
	}
	var out []*dto.Metric
	for _, m := range f.GetMetric() {
		have := make(map[string]string, len(m.GetLabel()))
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range labels {
			if have[k] != v {
				match = false
				break
			}
		}
		if match {
			out = append(out, m)
		}
	}
	return out
}
