// kiln tokenize: prints the token ids of a text (BOS included when the vocabulary adds it, unless --no-bos) on one line,
// separated by spaces. Reads only the model's header (for the vocabulary size) and the tokenizer, not the weights; a GGUF file's
// own vocabulary is used unless --tokenizer is given, so vocabulary-only GGUF files (no tensors) work too; a Hugging Face
// folder's tokenizer.json likewise (with config.json, its weights unread).

using System.CommandLine;
using Kiln.Models.Formats;
using Kiln.Models.Tokenizers;

namespace Kiln.Cli.Commands;

/// <summary>The <c>tokenize</c> command.</summary>
internal static class TokenizeCommand
{
    /// <summary>Builds the command.</summary>
    public static Command Create(CliContext context)
    {
        Option<string?> model = CommonOptions.Model();
        Option<string?> tokenizer = CommonOptions.Tokenizer();
        Option<bool> noBos = new("--no-bos") { Description = "Leave out the special tokens the vocabulary adds at the start and end (BOS, or [CLS]/[SEP])." };
        Argument<string> text = new("TEXT") { Description = "The text to encode." };
        Command command = new("tokenize", "Print the token ids of TEXT (BOS included unless --no-bos) on one line.")
        {
            model, tokenizer, noBos, text,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            // The tokenizer: --tokenizer, else a GGUF file's own vocabulary (vocabulary-only files work: no weights
            // or llama config are needed), else the llama2.c tokenizer next to the checkpoint, sized by its header.
            string modelPath = ModelFiles.ResolveModel(parse.GetValue(model), context.Environment);
            string? flag = parse.GetValue(tokenizer);
            ITokenizer vocabulary;
            if (HuggingFaceLlama.IsFolder(modelPath))
            {
                // A Hugging Face folder: config.json for the vocabulary size, the folder's tokenizer.json.
                int vocab = HuggingFaceLlama.ReadConfig(Path.Combine(modelPath, HuggingFaceLlama.ConfigFile)).Config.VocabSize;
                vocabulary = string.IsNullOrEmpty(flag) ? LlamaModelFile.LoadFolderTokenizer(modelPath) : LlamaModelFile.LoadTokenizerFile(flag, vocab);
            }
            else if (GgufFile.IsGguf(modelPath))
            {
                GgufFile gguf = GgufFile.Open(modelPath);
                vocabulary = string.IsNullOrEmpty(flag)
                    ? GgufTokenizers.Load(gguf)
                    : LlamaModelFile.LoadTokenizerFile(flag, LlamaModelFile.VocabSizeOf(gguf)
                        ?? throw new CliException($"{modelPath} declares no vocabulary size (llama.vocab_size, tokenizer.ggml.tokens or token_embd.weight); a llama2.c --tokenizer needs one.", CliException.FailureExitCode));
            }
            else
            {
                int vocab = Llama2cCheckpoint.ReadHeader(modelPath).Config.VocabSize;
                vocabulary = LlamaModelFile.LoadTokenizerFile(ModelFiles.ResolveTokenizer(flag, modelPath, vocab), vocab);
            }

            int[] ids = vocabulary.Encode(parse.GetValue(text) ?? string.Empty, bos: !parse.GetValue(noBos));
            context.Stdout.WriteLine(string.Join(' ', ids));
            return 0;
        }));
        return command;
    }
}
