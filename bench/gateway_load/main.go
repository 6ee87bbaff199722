// A cheap load generator and instant upstream for bench/bench_gateway.py (Go standard library only).
//
// A Python load generator costs about as much CPU per request as the gateway it measures, so on
// a 2-core machine it cannot drive one gateway process to its limit. This one costs a few tens
// of microseconds per request, so the gateway can be pinned to one core and measured there.
//
//	gateway_load pod   -listen 127.0.0.1:0 -port-file F      # instant OpenAI pod (JSON and SSE)
//	gateway_load load  -url U -key K -body B -concurrency 32 -seconds 5       # closed loop
//	gateway_load load  -url U -key K -body B -rate 1000 -seconds 5            # open loop
//
// `load` prints one JSON object: requests, errors, seconds, rps, p50_ms, p99_ms, max_ms.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

const completion = `{"id":"b","object":"text_completion","created":0,"model":"tiny","choices":[{"index":0,"text":"hi there","finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":40,"completion_tokens":2,"total_tokens":42}}`
const chat = `{"id":"b","object":"chat.completion","created":0,"model":"tiny","choices":[{"index":0,"message":{"role":"assistant","content":"hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":2,"total_tokens":42}}`

func pod(args []string) {
	fs := flag.NewFlagSet("pod", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	portFile := fs.String("port-file", "", "write the port here once listening")
	_ = fs.Parse(args)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		panic(err)
	}
	answer := func(body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var req struct {
				Stream bool `json:"stream"`
			}
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
				http.Error(w, `{"error":{"message":"bad json"}}`, http.StatusBadRequest)
				return
			}
			if req.Stream {
				w.Header().Set("Content-Type", "text/event-stream")
				f := w.(http.Flusher)
				for i := 0; i < 4; i++ {
					fmt.Fprintf(w, "data: {\"id\":\"b\",\"object\":\"text_completion\",\"created\":0,\"model\":\"tiny\",\"choices\":[{\"index\":0,\"text\":\"tok\",\"finish_reason\":null}]}\n\n")
					f.Flush()
				}
				fmt.Fprintf(w, "data: {\"id\":\"b\",\"object\":\"text_completion\",\"created\":0,\"model\":\"tiny\",\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":4,\"total_tokens\":44}}\n\ndata: [DONE]\n\n")
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(body))
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/completions", answer(completion))
	mux.HandleFunc("/v1/chat/completions", answer(chat))
	if *portFile != "" {
		port := ln.Addr().(*net.TCPAddr).Port
		_ = os.WriteFile(*portFile+".tmp", []byte(fmt.Sprint(port)), 0o644)
		_ = os.Rename(*portFile+".tmp", *portFile)
	}
	panic(http.Serve(ln, mux))
}

type result struct {
	Requests int     `json:"requests"`
	Errors   int     `json:"errors"`
	Seconds  float64 `json:"seconds"`
	RPS      float64 `json:"rps"`
	P50      float64 `json:"p50_ms"`
	P99      float64 `json:"p99_ms"`
	Max      float64 `json:"max_ms"`
	FirstErr string  `json:"first_error,omitempty"`
}

func load(args []string) {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	url := fs.String("url", "", "full URL to POST to")
	key := fs.String("key", "", "bearer key")
	body := fs.String("body", "{}", "JSON body")
	concurrency := fs.Int("concurrency", 32, "closed loop: callers back to back")
	rate := fs.Float64("rate", 0, "open loop: requests per second (0: closed loop)")
	seconds := fs.Float64("seconds", 5, "duration")
	stream := fs.Bool("stream", false, "latency to the first SSE data line (TTFT), not the whole response")
	_ = fs.Parse(args)
	transport := &http.Transport{MaxIdleConns: 4096, MaxIdleConnsPerHost: 4096, IdleConnTimeout: 2 * time.Second,
		DisableCompression: true}
	client := &http.Client{Transport: transport, Timeout: 60 * time.Second}
	var mu sync.Mutex
	var lat []float64
	errors, firstErr := 0, ""
	one := func() {
		req, _ := http.NewRequest("POST", *url, strings.NewReader(*body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+*key)
		start := time.Now()
		resp, err := client.Do(req)
		ok := err == nil && resp.StatusCode == 200
		var ms float64
		if err == nil {
			if *stream && ok {
				reader := bufio.NewReader(resp.Body)
				for {
					line, rerr := reader.ReadString('\n')
					if strings.HasPrefix(line, "data:") || rerr != nil {
						ok = rerr == nil
						break
					}
				}
				ms = float64(time.Since(start).Microseconds()) / 1000
				_, _ = io.Copy(io.Discard, reader)
			} else {
				_, _ = io.Copy(io.Discard, resp.Body)
				ms = float64(time.Since(start).Microseconds()) / 1000
			}
			resp.Body.Close()
		}
		mu.Lock()
		if ok {
			lat = append(lat, ms)
		} else {
			errors++
			if firstErr == "" {
				if err != nil {
					firstErr = err.Error()
				} else {
					firstErr = resp.Status
				}
			}
		}
		mu.Unlock()
	}
	duration := time.Duration(*seconds * float64(time.Second))
	start := time.Now()
	var wg sync.WaitGroup
	if *rate > 0 {
		n := int(*rate * *seconds)
		for i := 0; i < n; i++ {
			if d := time.Until(start.Add(time.Duration(float64(i) / *rate * float64(time.Second)))); d > 0 {
				time.Sleep(d)
			}
			wg.Add(1)
			go func() { defer wg.Done(); one() }()
		}
	} else {
		for c := 0; c < *concurrency; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Since(start) < duration {
					one()
				}
			}()
		}
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	sort.Float64s(lat)
	q := func(p float64) float64 {
		if len(lat) == 0 {
			return -1
		}
		i := int(p * float64(len(lat)))
		if i >= len(lat) {
			i = len(lat) - 1
		}
		return lat[i]
	}
	r := result{Requests: len(lat), Errors: errors, Seconds: elapsed, RPS: float64(len(lat)) / elapsed,
		P50: q(0.5), P99: q(0.99), Max: q(1), FirstErr: firstErr}
	_ = json.NewEncoder(os.Stdout).Encode(r)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gateway_load pod|load [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "pod":
		pod(os.Args[2:])
	case "load":
		load(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "usage: gateway_load pod|load [flags]")
		os.Exit(2)
	}
}
