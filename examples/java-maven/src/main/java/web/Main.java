package web;

import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

/** A web app on the JDK's own HTTP server: no dependencies beyond the JDK. */
public class Main {
    static String version() {
        String v = System.getenv("VERSION");
        if (v != null && !v.isEmpty()) return v;
        try {
            return Files.readString(Path.of("VERSION")).trim();
        } catch (IOException e) {
            return "unknown";
        }
    }

    public static void main(String[] args) throws IOException {
        String host = System.getenv().getOrDefault("BIND_ADDRESS", "127.0.0.1");
        int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "5000"));
        String tool = args.length > 0 ? args[0] : "java";
        HttpServer server = HttpServer.create(new InetSocketAddress(host, port), 64);
        server.createContext("/", exchange -> {
            byte[] body = ("hello from " + System.getenv("APP") + " " + tool + " " + version() + "\n")
                    .getBytes(StandardCharsets.UTF_8);
            exchange.sendResponseHeaders(200, body.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        });
        server.start();
        System.out.println("listening on " + host + ":" + port);
    }
}
