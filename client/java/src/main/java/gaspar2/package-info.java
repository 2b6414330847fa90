/**
 * Client for gaspar2 servers: one length-prefixed request per TCP connection. See
 * {@link gaspar2.Gaspar2}.
 */
package gaspar2;
