package gaspar2;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * gaspar2 client for Java: one request per connection, plain java.net.Socket.
 *
 * <p>The request is a 4-byte big-endian length and the payload; the reply is everything the
 * server writes before closing. A failed request is a TCP reset, never an empty reply.
 *
 * <p>Command line: {@code java -cp DIR gaspar2.Gaspar2 [--timeout SECONDS] HOST:PORT [MESSAGE]}
 */
public final class Gaspar2 {

    /** The version of this client. */
    public static final String VERSION = "0.1.0";

    /** The server reset the connection: the request failed there (see the server's log). */
    public static final class RequestFailed extends IOException {
        private static final long serialVersionUID = 1L;

        RequestFailed(String message, Throwable cause) {
            super(message, cause);
        }
    }

    /** "host:port" or "[v6 address]:port". */
    private static final Pattern URL = Pattern.compile("\\[?(.*?)\\]?:(\\d{1,5})");

    private Gaspar2() {}

    /**
     * Sends {@code message} to the server at {@code url} and returns the reply, possibly
     * empty.
     *
     * @param url "host:port", ":port" for 127.0.0.1, or "[v6 address]:port"
     * @param message the request's payload, any bytes
     * @param timeoutMs limit for connecting and for the whole reply; 0 means none
     * @return the reply
     * @throws RequestFailed the server reset the connection: the request failed
     * @throws java.net.ConnectException nothing listens there
     * @throws SocketTimeoutException no complete reply within {@code timeoutMs}
     * @throws IOException any other failure (unknown host, ...)
     */
    public static byte[] request(String url, byte[] message, int timeoutMs) throws IOException {
        Matcher address = URL.matcher(url);
        if (!address.matches()) {
            throw new IllegalArgumentException("expected HOST:PORT, got " + url);
        }
        String host = address.group(1).isEmpty() ? "127.0.0.1" : address.group(1);
        int port = Integer.parseInt(address.group(2));
        long deadline = System.nanoTime() + timeoutMs * 1_000_000L;

        // Length and payload in one buffer, so they leave in one write rather than two.
        byte[] frame = ByteBuffer.allocate(4 + message.length).putInt(message.length).put(message).array();

        try (Socket socket = new Socket()) {
            socket.connect(new InetSocketAddress(host, port), timeoutMs);
            // Once connected, an aborted connection means the server reset it: the request
            // failed. The JDK reports that as a SocketException whose text varies (reset,
            // broken pipe, localized), so every SocketException from here on is a reset.
            try {
                socket.getOutputStream().write(frame);
                socket.shutdownOutput(); // half-close: the request is complete
                InputStream in = socket.getInputStream();
                ByteArrayOutputStream reply = new ByteArrayOutputStream();
                byte[] buffer = new byte[65536];
                while (true) {
                    if (timeoutMs > 0) {
                        long left = (deadline - System.nanoTime()) / 1_000_000L;
                        if (left <= 0) {
                            throw new SocketTimeoutException("no reply within " + timeoutMs + " ms");
                        }
                        socket.setSoTimeout((int) Math.min(left, Integer.MAX_VALUE));
                    }
                    int n = in.read(buffer);
                    if (n < 0) {
                        return reply.toByteArray(); // orderly close: the reply is complete
                    }
                    reply.write(buffer, 0, n);
                }
            } catch (SocketException e) {
                throw new RequestFailed(
                        url + ": connection reset: the request failed on the server (see its log)", e);
            }
        }
    }

    /**
     * {@link #request(String, byte[], int)} with a text message, sent as UTF-8.
     *
     * @param url "host:port", ":port" for 127.0.0.1, or "[v6 address]:port"
     * @param message the request's payload, sent as UTF-8
     * @param timeoutMs limit for connecting and for the whole reply; 0 means none
     * @return the reply
     * @throws IOException as {@link #request(String, byte[], int)}
     */
    public static byte[] request(String url, String message, int timeoutMs) throws IOException {
        return request(url, message.getBytes(StandardCharsets.UTF_8), timeoutMs);
    }

    /**
     * gaspar2-request [--timeout SECONDS] HOST:PORT [MESSAGE]: sends MESSAGE (standard input
     * when it is absent or "-") and writes the reply to standard output. On failure writes
     * one line to standard error and exits 1.
     *
     * @param args the command line
     */
    public static void main(String[] args) {
        int timeoutMs = 0;
        int i = 0;
        try {
            if (args.length >= 2 && args[0].equals("--timeout")) {
                double seconds = Double.parseDouble(args[1]);
                if (!(seconds >= 0)) {
                    throw new NumberFormatException();
                }
                timeoutMs = (int) Math.min(Math.ceil(seconds * 1000), Integer.MAX_VALUE);
                i = 2;
            }
        } catch (NumberFormatException e) {
            usage();
        }
        if (args.length - i < 1 || args.length - i > 2) {
            usage();
        }
        String url = args[i];
        try {
            byte[] message = args.length - i == 1 || args[i + 1].equals("-")
                    ? System.in.readAllBytes()
                    : args[i + 1].getBytes(StandardCharsets.UTF_8);
            byte[] reply = request(url, message, timeoutMs);
            System.out.write(reply);
            System.out.flush();
            if (System.out.checkError()) {
                throw new IOException("cannot write the reply to standard output");
            }
        } catch (java.net.ConnectException e) {
            fail(url + ": connection refused: is the server running?");
        } catch (SocketTimeoutException e) {
            fail(url + ": timed out");
        } catch (java.net.UnknownHostException e) {
            fail(url + ": cannot resolve " + e.getMessage());
        } catch (IOException | IllegalArgumentException e) {
            fail(e.getMessage());
        }
    }

    private static void usage() {
        System.err.println("usage: gaspar2-request [--timeout SECONDS] HOST:PORT [MESSAGE]");
        System.exit(2);
    }

    private static void fail(String message) {
        System.err.println("gaspar2-request: " + message);
        System.exit(1);
    }
}
