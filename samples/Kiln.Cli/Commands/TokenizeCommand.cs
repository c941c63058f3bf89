// kiln tokenize: prints the token ids of a text (BOS included) on one line, separated by spaces. Reads only the
// model's header (for the vocabulary size) and the tokenizer, not the weights.

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
        Argument<string> text = new("TEXT") { Description = "The text to encode." };
        Command command = new("tokenize", "Print the token ids of TEXT (BOS included) on one line.")
        {
            model, tokenizer, text,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            // The vocabulary size comes from the model header; the weights are not needed.
            string modelPath = ModelFiles.ResolveModel(parse.GetValue(model), context.Environment);
            Llama2cHeader header = Llama2cCheckpoint.ReadHeader(modelPath);
            int vocab = header.Config.VocabSize;
            string tokenizerPath = ModelFiles.ResolveTokenizer(parse.GetValue(tokenizer), modelPath, vocab);
            Llama2cTokenizer vocabulary = Llama2cTokenizer.Load(tokenizerPath, vocab);
            int[] ids = vocabulary.Encode(parse.GetValue(text) ?? string.Empty, bos: true);
            context.Stdout.WriteLine(string.Join(' ', ids));
            return 0;
        }));
        return command;
    }
}
