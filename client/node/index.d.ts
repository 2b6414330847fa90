// Types for the gaspar2 client (gaspar2.js).

/// <reference types="node" />

export interface RequestOptions {
  /** Milliseconds for the whole request; none or 0 means no limit. */
  timeout?: number;
  /**
   * Aborts the request: it rejects with code 'ABORT_ERR', or 'ETIMEDOUT' when the signal
   * came from AbortSignal.timeout().
   */
  signal?: AbortSignal;
}

/** How a request failed: see `code`. */
export interface RequestError extends Error {
  /**
   * 'ECONNRESET': the request failed on the server; 'ECONNREFUSED': nothing listens there
   * (or no unix socket's file is there); 'ETIMEDOUT': no reply in time; 'ABORT_ERR': the
   * signal aborted it; 'ENOTSUP': "unix:@NAME" on a Node.js that cannot reach abstract
   * names (before Node.js 22, or not Linux); otherwise the socket's own code ('ENOTFOUND',
   * 'EACCES', ...).
   */
  code: string;
  cause?: unknown;
}

/**
 * Sends `message` (bytes, or a string sent as UTF-8) to the gaspar2 server at `url`
 * ("host:port", "[v6 address]:port", "unix:PATH" for a unix socket, or "unix:@NAME" for
 * one in Linux's abstract namespace, which needs Node.js 22) and resolves to the reply,
 * possibly empty. Rejects with a RequestError.
 */
export function request(
  url: string,
  message: Uint8Array | string,
  options?: RequestOptions,
): Promise<Buffer>;

/** "host:port" or "[v6 address]:port" -> { host, port }; a TypeError for anything else. */
export function parseUrl(url: string): { host: string; port: number };

/**
 * "unix:PATH" -> PATH, "unix:@NAME" -> "\0NAME" (the abstract namespace's leading NUL),
 * null for any other address; a TypeError for "unix:" or "unix:@" with nothing after.
 */
export function unixPath(url: string): string | null;
