package gaspar2;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.ConnectException;
import java.net.InetSocketAddress;
import java.net.ProtocolFamily;
import java.net.Socket;
import java.net.SocketAddress;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.net.StandardProtocolFamily;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.Charset;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.InvalidPathException;
import java.nio.file.Paths;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * gaspar2 client for Java: one request per connection, plain java.net.Socket (and, for unix
 * sockets, java.nio.channels.SocketChannel).
 *
 * <p>The request is a 4-byte big-endian length and the payload; the reply is everything the
 * server writes before closing. A failed request is a connection reset, never an empty
 * reply.
 *
 * <p>The server's address is {@code "host:port"}, {@code ":port"} for 127.0.0.1,
 * {@code "[v6 address]:port"}, or {@code "unix:PATH"} for a unix socket's file (a server
 * started with {@code --bind unix:PATH}), which needs Java 16 or later. Names in Linux's
 * abstract namespace ({@code "unix:@NAME"}) are refused with an
 * {@link UnsupportedOperationException}: Java's standard library cannot reach them (a path
 * may not hold the leading NUL they start with), so bind the server to a path for Java.
 *
 * <p>Command line: {@code java -cp DIR gaspar2.Gaspar2 [--timeout SECONDS] ADDRESS [MESSAGE]}
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

    private static final String RESET = ": connection reset: the request failed on the server (see its log)";

    private Gaspar2() {}

    /**
     * Sends {@code message} to the server at {@code url} and returns the reply, possibly
     * empty.
     *
     * @param url "host:port", ":port" for 127.0.0.1, "[v6 address]:port", or "unix:PATH"
     *     for a unix socket's file (Java 16 or later)
     * @param message the request's payload, any bytes
     * @param timeoutMs limit for connecting and for the whole reply; 0 means none
     * @return the reply
     * @throws RequestFailed the server reset the connection: the request failed
     * @throws java.net.ConnectException nothing listens there (for "unix:PATH", no socket's
     *     file there either)
     * @throws SocketTimeoutException no complete reply within {@code timeoutMs}
     * @throws IOException any other failure (unknown host, a unix socket's file this
     *     process may not open, ...)
     * @throws IllegalArgumentException {@code url} is none of the above
     * @throws UnsupportedOperationException {@code url} is "unix:@NAME", a name in Linux's
     *     abstract namespace, which Java's standard library cannot reach; or "unix:PATH"
     *     before Java 16
     */
    public static byte[] request(String url, byte[] message, int timeoutMs) throws IOException {
        // Length and payload in one buffer, so they leave in one write rather than two.
        byte[] frame = ByteBuffer.allocate(4 + message.length).putInt(message.length).put(message).array();
        if (url.startsWith("unix:")) {
            return requestUnix(url, url.substring("unix:".length()), frame, timeoutMs);
        }
        Matcher address = URL.matcher(url);
        if (!address.matches()) {
            throw new IllegalArgumentException("expected HOST:PORT or unix:PATH, got " + url);
        }
        String host = address.group(1).isEmpty() ? "127.0.0.1" : address.group(1);
        int port = Integer.parseInt(address.group(2));
        long deadline = System.nanoTime() + timeoutMs * 1_000_000L;

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
                throw new RequestFailed(url + RESET, e);
            }
        }
    }

    /**
     * A request over a unix socket. Its channel has no read timeout, so a timer closes it at
     * the deadline, and whatever the closing interrupted is the timeout.
     */
    private static byte[] requestUnix(String url, String path, byte[] frame, int timeoutMs)
            throws IOException {
        if (path.isEmpty() || path.equals("@")) {
            throw new IllegalArgumentException("unix: needs a path, got " + url);
        }
        if (path.startsWith("@")) {
            throw new UnsupportedOperationException(url + ": abstract unix socket names (unix:@NAME) are "
                    + "not supported by Java's standard library; bind the server to a unix:PATH");
        }
        if (Unix.tooLong(path)) {
            // Else the JDK's own refusal would pass for a missing file, that is for "refused".
            throw new SocketException(url + ": path too long for a unix socket");
        }
        SocketAddress address = Unix.address(url, path);
        SocketChannel channel = Unix.open(url);
        AtomicBoolean expired = new AtomicBoolean();
        ScheduledFuture<?> alarm = timeoutMs <= 0 ? null : Unix.TIMER.schedule(() -> {
            expired.set(true);
            closeQuietly(channel);
        }, timeoutMs, TimeUnit.MILLISECONDS);
        try {
            try {
                channel.connect(address);
            } catch (IOException e) {
                if (expired.get()) {
                    throw timedOut(url, timeoutMs);
                }
                if (e instanceof ConnectException || Files.notExists(Paths.get(path))) {
                    // A unix socket's file that is not there is refused too: nothing listens.
                    ConnectException refused = new ConnectException(url + ": connection refused");
                    refused.initCause(e);
                    throw refused;
                }
                throw e;
            }
            // Once connected, any failure but the timeout is the server's reset, as on TCP.
            try {
                ByteBuffer out = ByteBuffer.wrap(frame);
                while (out.hasRemaining()) {
                    channel.write(out);
                }
                channel.shutdownOutput(); // half-close: the request is complete
                ByteArrayOutputStream reply = new ByteArrayOutputStream();
                ByteBuffer in = ByteBuffer.allocate(65536);
                while (channel.read(in) >= 0) {
                    reply.write(in.array(), 0, in.position());
                    in.clear();
                }
                return reply.toByteArray(); // orderly close: the reply is complete
            } catch (IOException e) {
                if (expired.get()) {
                    throw timedOut(url, timeoutMs);
                }
                throw new RequestFailed(url + RESET, e);
            }
        } finally {
            if (alarm != null) {
                alarm.cancel(false);
            }
            closeQuietly(channel);
        }
    }

    private static void closeQuietly(SocketChannel channel) {
        try {
            channel.close();
        } catch (IOException e) {
            // closed all the same
        }
    }

    private static SocketTimeoutException timedOut(String url, int timeoutMs) {
        return new SocketTimeoutException(url + ": no reply within " + timeoutMs + " ms");
    }

    /**
     * Unix sockets, reached by reflection so that the jar still runs on Java 11 (for TCP):
     * UnixDomainSocketAddress and SocketChannel.open(ProtocolFamily) came in Java 16.
     */
    private static final class Unix {
        /** Closes the channels of requests whose time is up; its thread ends when idle. */
        static final ScheduledThreadPoolExecutor TIMER = new ScheduledThreadPoolExecutor(1, task -> {
            Thread thread = new Thread(task, "gaspar2-timeout");
            thread.setDaemon(true);
            return thread;
        });

        static {
            TIMER.setRemoveOnCancelPolicy(true);
            TIMER.setKeepAliveTime(1, TimeUnit.SECONDS);
            TIMER.allowCoreThreadTimeOut(true);
        }

        private Unix() {}

        /** Whether the path, as the file system spells it, overflows a sockaddr_un (108 bytes). */
        static boolean tooLong(String path) {
            String encoding = System.getProperty("sun.jnu.encoding");
            Charset charset = encoding != null && Charset.isSupported(encoding)
                    ? Charset.forName(encoding) : Charset.defaultCharset();
            return path.getBytes(charset).length >= 108;
        }

        static SocketAddress address(String url, String path) {
            try {
                return (SocketAddress) Class.forName("java.net.UnixDomainSocketAddress")
                        .getMethod("of", String.class).invoke(null, path);
            } catch (ReflectiveOperationException e) {
                if (e.getCause() instanceof InvalidPathException) {
                    throw new IllegalArgumentException(url + ": " + e.getCause().getMessage(), e.getCause());
                }
                throw unsupported(url, e);
            }
        }

        static SocketChannel open(String url) throws IOException {
            try {
                return (SocketChannel) SocketChannel.class.getMethod("open", ProtocolFamily.class)
                        .invoke(null, StandardProtocolFamily.valueOf("UNIX"));
            } catch (ReflectiveOperationException | IllegalArgumentException e) {
                if (e.getCause() instanceof IOException) {
                    throw (IOException) e.getCause();
                }
                throw unsupported(url, e);
            }
        }

        private static UnsupportedOperationException unsupported(String url, Exception cause) {
            return new UnsupportedOperationException(
                    url + ": unix sockets need Java 16 or later, this is " + System.getProperty("java.version"), cause);
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
     * gaspar2-request [--timeout SECONDS] ADDRESS [MESSAGE]: sends MESSAGE (standard input
     * when it is absent or "-") to ADDRESS ("host:port", "[v6 address]:port" or
     * "unix:PATH") and writes the reply to standard output. On failure writes one line to
     * standard error and exits 1 ("unix:@NAME" among them: see the class's description).
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
        } catch (IOException | IllegalArgumentException | UnsupportedOperationException e) {
            fail(e.getMessage());
        }
    }

    private static void usage() {
        System.err.println("usage: gaspar2-request [--timeout SECONDS] HOST:PORT|unix:PATH [MESSAGE]");
        System.exit(2);
    }

    private static void fail(String message) {
        System.err.println("gaspar2-request: " + message);
        System.exit(1);
    }
}
